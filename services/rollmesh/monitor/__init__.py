"""Live monitoring of production agents, from Python: publish each interaction as a trace, read the
rubric service's scores back.

    from rollmesh.monitor import TracePublisher, ScoreReader, publish_trace

See rollmesh.monitor.publish for examples; the rubric service (`rollmesh rubric serve`) scores the
traces with each app's rubric ([monitor] in its config).
"""

from .publish import ScoreReader, TracePublisher, publish_trace
from .traces import make_trace

__all__ = ["ScoreReader", "TracePublisher", "make_trace", "publish_trace"]
