"""The one place that touches Faust's, aiokafka's and mode's private API.

Each fix names its fault in docs/RELIABILITY.md ("Where the fixes live" maps faults to classes);
app/runtime/faust_fixes/apps.py composes the consumer. Everything else imports the public names below.
"""

from app.runtime.faust_fixes.aiokafka_state import forget_fetch_state, refresh_metadata
from app.runtime.faust_fixes.apps import FastPathApp, StreamRecApp, app_class
from app.runtime.faust_fixes.batches import acked_only_when_done, in_partition_of, offset_spans
from app.runtime.faust_fixes.introspect import pipeline_state
from app.runtime.faust_fixes.shutdown import StreamRecWorker

__all__ = ["FastPathApp", "StreamRecApp", "StreamRecWorker", "acked_only_when_done", "app_class",
           "forget_fetch_state", "in_partition_of", "offset_spans", "pipeline_state", "refresh_metadata"]
