"""Every Faust table's RocksDB store is bounded by the settings, not Faust's gigabyte defaults."""

from __future__ import annotations

from pathlib import Path

from app.runtime.faust_app import build_runtime
from app.runtime.settings import Settings


def test_table_stores_use_the_configured_rocksdb_memory_bounds(tmp_path: Path) -> None:
    settings = Settings(kafka_bootstrap="127.0.0.1:1", data_dir=tmp_path, rocksdb_write_buffer_mb=4,
                        rocksdb_block_cache_mb=12)
    runtime = build_runtime(settings)
    for table in (runtime.profiles, runtime.recstate, runtime.stats, runtime.feedback):
        options = table.data.rocksdb_options
        assert options.write_buffer_size == 4 * 2**20
        assert options.max_write_buffer_number == 2
        assert options.block_cache_size == 12 * 2**20
