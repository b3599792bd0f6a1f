"""Typed errors. Each carries one line that names the file:line, layer or peer at fault."""


class GeepsError(Exception):
    """Base of every error the CLI reports as one line and a non-zero exit."""


class PrototxtError(GeepsError):
    """A text-format file that does not parse: `FILE:LINE:COL: message`."""


class NetError(GeepsError):
    """A net that cannot be built: unknown bottom, duplicate top, bad shapes, ..."""


class LayerError(NetError):
    """A layer whose parameters or blob shapes are invalid; the message names the layer."""


class SolverError(GeepsError):
    """A solver file with bad or unsupported fields."""


class DataError(GeepsError):
    """A data source that is missing, corrupt or of the wrong shape."""


class SnapshotError(GeepsError):
    """A .caffemodel / .solverstate that is truncated, foreign or does not fit the net."""


class PsError(GeepsError):
    """The PS cannot go on: a plan that does not fit, a misused call, a failed thread."""


class PsConfigError(PsError):
    """A PS configuration value out of range: `SOURCE: FIELD: what is wrong`."""


class DeadlineError(PsError):
    """A wait that passed its deadline; the message names what was awaited and who is late."""


class WireError(PsError):
    """A message that fails validation: bad magic, version, type, lengths, checksum or sender."""


class PeerLost(PsError):
    """A silent peer: `worker 2 (URL): no heartbeat for 30.0 s; its last clock was 41`."""
