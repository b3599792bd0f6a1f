"""A fake training loop over the PS calls, and plain NumPy bookkeeping with the same call surface.

`step(api, worker, t)` touches every kind of data the engine will: tables read in forward and
updated in backward (one of them twice per clock, one never), activations, a uint8 mask, a diff,
solver history, an input written each iteration and frozen params. Its arithmetic is elementwise
float32, so the PS and the reference produce bit-identical values when the PS keeps its promises.
Rules the loop keeps (as the engine does): it never writes into read buffers or into local data
released with keep=False, and it fully overwrites local data acquired with fetch=False.
"""

import numpy

TABLES = {"W1": 1000, "W2": 300, "W3": 77, "W4": 40}  # W3: two updates per clock; W4: never updated
LOCALS = {  # name: (num_values, kind, dtype)
    "inp": (200, "input", "float32"),
    "act": (300, "activation", "float32"),
    "mask": (300, "internal", "uint8"),
    "diff": (300, "diff", "float32"),
    "hist1": (1000, "history", "float32"),
    "hist2": (300, "history", "float32"),
    "frozen": (50, "frozen", "float32"),
}


def initial_values(seed: int = 0, tables=TABLES, local=LOCALS):
    """(table values, local values) every run starts from (frozen params random, others 0)."""
    rng = numpy.random.default_rng(seed)
    values = {n: rng.standard_normal(size).astype("float32") for n, size in tables.items()}
    data = {n: numpy.zeros(size, dtype) for n, (size, _, dtype) in local.items()}
    for n, (size, kind, _) in local.items():
        if kind == "frozen":
            data[n] = rng.standard_normal(size).astype("float32")
    return values, data


def batch(worker: int, t: int) -> numpy.ndarray:
    """The input of `worker` at iteration `t`."""
    return numpy.linspace(-1, 1, 200, dtype="float32") * numpy.float32(1 + t % 5 + 10 * worker)


def step(api, worker: int, t: int) -> None:
    """One iteration: forward, backward with updates, clock."""
    T, L = api.tables, api.locals
    x = api.local_access(L["inp"], fetch=False)
    x[...] = batch(worker, t)
    api.post_local_access(L["inp"], keep=True)
    # forward
    w1, w3, w4 = api.read(T["W1"]), api.read(T["W3"]), api.read(T["W4"])
    x = api.local_access(L["inp"], fetch=True)
    a = api.local_access(L["act"], fetch=False)
    m = api.local_access(L["mask"], fetch=False)
    f = api.local_access(L["frozen"], fetch=True)
    a[...] = w1[:300] * f[7] + w3[5] - w4[:1]
    a[:200] += x * numpy.float32(0.5)
    m[...] = a > 0
    for name, keep in (("act", True), ("mask", True), ("frozen", False), ("inp", False)):
        api.post_local_access(L[name], keep=keep)
    api.post_read(T["W4"])
    api.post_read(T["W3"])
    api.post_read(T["W1"])
    w2 = api.read(T["W2"])
    a = api.local_access(L["act"], fetch=True)
    d = api.local_access(L["diff"], fetch=False)
    d[...] = w2 * a
    api.post_local_access(L["act"], keep=False)
    api.post_local_access(L["diff"], keep=True)
    api.post_read(T["W2"])
    # backward
    g2 = api.pre_update(T["W2"])
    d = api.local_access(L["diff"], fetch=True)
    a = api.local_access(L["act"], fetch=True)
    h2 = api.local_access(L["hist2"], fetch=True)
    h2[...] = h2 * numpy.float32(0.9) + d * a * numpy.float32(0.01)
    g2[...] = -h2
    for name, keep in (("hist2", True), ("act", False), ("diff", False)):
        api.post_local_access(L[name], keep=keep)
    api.update(T["W2"])
    g1 = api.pre_update(T["W1"])
    w1 = api.read(T["W1"])
    m = api.local_access(L["mask"], fetch=True)
    h1 = api.local_access(L["hist1"], fetch=True)
    x = api.local_access(L["inp"], fetch=True)
    h1[...] = h1 * numpy.float32(0.9) + w1 * numpy.float32(0.001)
    h1[:300] += m.astype("float32") * numpy.float32(0.01)
    g1[...] = -h1
    g1[:200] -= x * numpy.float32(0.001)
    for name, keep in (("inp", False), ("hist1", True), ("mask", False)):
        api.post_local_access(L[name], keep=keep)
    api.update(T["W1"])
    api.post_read(T["W1"])
    for k in (1, 2):
        g3 = api.pre_update(T["W3"])
        g3[...] = numpy.float32(0.01 * k * (t % 3 - 1))
        api.update(T["W3"])
    api.clock()


class ClientApi:
    """The client under its loop names; during recording the calls return dummy buffers."""

    def __init__(self, client, tables=TABLES, local=LOCALS) -> None:
        self.client = client
        self.tables = {n: client.create_table(n, size) for n, size in tables.items()}
        self.locals = {n: client.create_local(n, *spec) for n, spec in local.items()}
        sizes = {("param", i): (tables[n], "float32") for n, i in self.tables.items()}
        sizes.update({("local", i): (local[n][0], local[n][2]) for n, i in self.locals.items()})
        self._sizes = sizes

    def _buf(self, out, key):
        return numpy.zeros(*self._sizes[key]) if out is None else out

    def read(self, t):
        return self._buf(self.client.read(t), ("param", t))

    def pre_update(self, t):
        return self._buf(self.client.pre_update(t), ("param", t))

    def local_access(self, i, fetch=True):
        return self._buf(self.client.local_access(i, fetch=fetch), ("local", i))

    def __getattr__(self, name):  # post_read, update, post_local_access, clock
        return getattr(self.client, name)


def start(client, worker=0, seed=0, body=step, tables=TABLES, local=LOCALS) -> ClientApi:
    """Register, initialise, record (`body` at iteration 0) and plan on `client`; started."""
    api = ClientApi(client, tables, local)
    values, data = initial_values(seed, tables, local)
    for n, i in api.tables.items():
        client.write_initial(i, values[n])
    for n, i in api.locals.items():
        client.write_local(i, data[n])
    with client.virtual_iteration():
        body(api, worker, 0)
    client.start_iterations()
    return api


class Reference:
    """Plain NumPy: the values the loop must produce. Updates are logged per table and applied at
    the clock (the loop never reads a table after its last update), as the PS cache does. Local
    data is handed out as a copy (NaN or 77 where not fetched) and stored back only when kept."""

    def __init__(self, values=None, seed=0, apply_own=True, tables=TABLES, local=LOCALS) -> None:
        init_tables, self.data = initial_values(seed, tables, local)
        self.values = init_tables if values is None else values
        self.specs, self.local_specs = tables, local
        self.tables = {n: n for n in tables}
        self.locals = {n: n for n in local}
        self.logs = {n: numpy.zeros(size, "float32") for n, size in tables.items()}
        self.apply_own = apply_own
        self._out = {}

    def read(self, t):
        return self.values[t]

    def post_read(self, t):
        pass

    def pre_update(self, t):
        self._out[t] = numpy.zeros(self.specs[t], "float32")
        return self._out[t]

    def update(self, t):
        self.logs[t] += self._out.pop(t)

    def local_access(self, name, fetch=True):
        size, _, dtype = self.local_specs[name]
        junk = numpy.full(size, numpy.nan if dtype == "float32" else 77, dtype)
        self._out[name] = self.data[name].copy() if fetch else junk
        return self._out[name]

    def post_local_access(self, name, keep=True):
        buf = self._out.pop(name)
        if keep:
            self.data[name] = buf

    def clock(self):
        if self.apply_own:
            for n, log in self.logs.items():
                self.values[n] += log
                log[...] = 0
