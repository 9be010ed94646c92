"""A warm spare kernel for the lab's `rust` kernel.

After a kernel start or restart, the first two cells of a lab notebook (`:dep lab-support` and the
one that loads the model) wait 5-7 s (measured on 6 December 2026): evcxr's embedded rust-analyzer
reads and analyses the crates under lab-support (12 of them, as the launcher narrows its graph) and
the standard library before it can tell the types of a cell's variables, and cargo checks the
build. That work can be done before the student asks for it.

`SpareProvisioner` is a jupyter_client kernel provisioner (the `kernel_provisioner` named in the
kernel spec). When spares are on (LAB_SPARE_KERNEL=1 in the Jupyter server's environment; `cargo
lab up` and `cargo lab hub` set it), one spare kernel waits per server. It was started in a folder, has run the lab's
first two cells there, then a small cell, and dropped the variables they made. The next kernel launch in that folder
(a restart, or another notebook) takes the spare over instead of starting a kernel from nothing:
the student gets a fresh kernel, with no variables, whose build and rust-analyzer are already warm.
Then a new spare starts, a few seconds later.

A launch that finds the spare still warming up waits for it, up to `SPARE_WAIT` seconds: a cold
kernel started instead would run the same warm-up on the same cores and answer the first cells later
than the spare (measured in `cargo lab bench --kernel`: a restart 20 s after the previous kernel's
start, the first notebook opened 25 s after `cargo lab up`). A spare that is not warm by then stays
for the next launch while this one starts cold, as without spares; a spare that failed, died, or was
warmed up on lab-support sources that have changed since is thrown away.

What differs from a cold kernel: the spare has already run `:dep lab-support` (with the absolute
path, which is what evcxr makes of the notebooks' relative one), so that dependency is there even
before the notebook's own `:dep` cell; and evcxr's execution counter goes on from the warm-up's
cells. A restart that takes a spare changes the kernel's ports: JupyterLab reconnects (it does
after every restart), but another client of the same kernel (a console, a second tab) must
reconnect by hand.

The module is also a Jupyter server extension (enabled in the venv by `cargo lab up`): with spares
on, a server makes the first spare as soon as it starts, in its `notebooks/` folder if it has one
(a hub student's home) and in its own folder otherwise, so that the first notebook opened can get
a warm kernel too.

Without LAB_SPARE_KERNEL=1 (the test runner's `jupyter execute`, nbgrader, `cargo lab up` or
`cargo lab hub` with LAB_SPARE_KERNEL=0) this is jupyter_client's own LocalProvisioner,
unchanged, and the extension does nothing.

The price: one more kernel per Jupyter server, idle, holding its memory (measured in docs/instructors.md),
and a warm-up in the background after every kernel launch.

The extension also gives every server the lab's kernel manager, `LabKernelManager` (in
lab_kernel_manager.py), whether or not spares are on: it keeps evcxr kernels alive through
jupyter_server's "nudge". Each time a client
opens a kernel's channels (a notebook opened or reconnected in JupyterLab, a hub user's notebook),
the server sends `kernel_info_request` on the shell and the control channel of a pair of transient
sockets, again every 0.5 s until the kernel answers, and closes both once it has an answer on
either and a message from the kernel's iopub channel. If the kernel's answer on the control
channel is still on its way then, evcxr_jupyter cannot send it ("Codec Error: Broken pipe" or
"Connection reset by peer") and its process exits: the server restarts the kernel, and every
variable is gone. Measured with jupyter_client and a real lab kernel: two requests on a control
socket closed 2 ms later killed a fresh kernel in 3 of 23 tries. It happened in a run of the spare
test (the first cell sent after connecting failed with "Subprocess terminated with status: signal:
9 (SIGKILL)"), and is the likely end of the hub test's kernel that left its client waiting until
CI's time ran out. A control channel of `LabKernelManager` closes `CONTROL_CLOSE_DELAY` seconds
after it is asked to, dropping what arrives meanwhile and anything still unsent then (linger 0),
so that the kernel's late answers find it open.
"""

import asyncio
import atexit
import os
import queue
import signal
import time
import uuid

from jupyter_client.asynchronous import AsyncKernelClient
from jupyter_client.connect import LocalPortCache, write_connection_file
from jupyter_client.launcher import launch_kernel
from jupyter_client.provisioning import LocalProvisioner
from jupyter_core.paths import jupyter_runtime_dir

# Marks a spare's processes; a cell can read it (the spare test does).
SPARE_ENV = "LAB_KERNEL_SPARE"
# How long a spare's warm-up may take: a slot built from nothing takes minutes.
WARM_UP_TIMEOUT = 900
PORT_NAMES = ("shell_port", "iopub_port", "stdin_port", "hb_port", "control_port")
# Seconds between a kernel launch and the start of the next spare, so that the new kernel's first
# cells (about 1 s with a warm spare) and the small ones after them run without the warm-up beside
# them: measured with no delay, small cells after a restart took 0.8 s (median) instead of 0.5 s.
# With 10 s, a restart 20 s after the previous start found its spare still warming up, and started
# cold; a launch now waits for a spare that is warming up.
NEXT_SPARE_DELAY = 5
# How long a launch waits for a spare that is warming up (it took 9-11 s, from its start, on a
# set-up machine with no other load, in the spare kernel test of 6 December 2026); a cold
# kernel's first two cells took 5-7 s together (`cargo lab bench --kernel`), more under load.
SPARE_WAIT = 30


def spares_enabled():
    return os.environ.get("LAB_SPARE_KERNEL") == "1"


def warm_up_cells(lab_support):
    """The lab's first two cells, a small cell of the kind that follows them, then a cell that
    drops what they defined.

    evcxr makes the `:dep` path absolute; the spare gives it absolute already, so the notebook's
    `:dep lab-support = { path = "../lab-support" }` finds the same dependency and nothing is
    reloaded. Full paths instead of the prelude: a `use` would stay in the kernel handed over.
    `drop` makes evcxr forget the variables, so the kernel handed over has none; evcxr forgets a
    variable only when it is moved, so the warm-up keeps none whose type is `Copy` (the label is
    `_`: `drop` of a `u32` copies it, and the kernel handed over would still know it).

    The third cell is for evcxr's rust-analyzer. It learns the types of a cell's variables, and
    the first cell that shows a value computed from them (`let`s, then a last expression through
    `?` and an index) makes it read and expand parts of the standard library and candle it had not
    needed before; later cells of that kind find them read. Measured in fresh kernels (evcxr's
    time for `let (x, label) = test.get(0)?;` then `model.predict(&x)?[0].class`, the notebooks'
    usual shape): 0.73-1.17 s as the first such cell, 0.38-0.45 s the next time; after this
    warm-up, 0.46-0.62 s as the first, as fast as the kernel's other small cells then (0.36-0.63 s,
    the machine's speed moved between runs); without it, in the same hour, 1.27 s.
    """
    path = os.path.realpath(lab_support).replace("\\", "\\\\").replace('"', '\\"')
    return [
        f':dep lab-support = {{ path = "{path}" }}',
        "let lab_spare_model = lab_support::model::Classifier::pretrained()?;\n"
        "let lab_spare_test = lab_support::data::mnist::test()?;",
        "let (lab_spare_x, _) = lab_spare_test.get(0)?;\nlab_spare_model.predict(&lab_spare_x)?[0].class",
        "drop(lab_spare_model);\ndrop(lab_spare_test);\ndrop(lab_spare_x);",
    ]


def lab_support_for(cwd, env):
    """The lab-support the notebooks in `cwd` load (`:dep lab-support = { path = "../lab-support" }`),
    else the lab's own (LAB_SUPPORT_DIR, from the kernel spec).

    The spare must warm up on the same one: with another, the notebook's `:dep` cell would build a
    second lab-support in the kernel's build folder over the one the spare has loaded, and the
    first cell built against it could not load ("dlopen failed"; measured in the hub test with
    students' `lab-support` links to another checkout: every kernel handed a spare died at the
    model cell)."""
    beside = os.path.join(cwd, os.pardir, "lab-support")
    if os.path.isfile(os.path.join(beside, "Cargo.toml")):
        return os.path.realpath(beside)
    return env.get("LAB_SUPPORT_DIR", "")


def source_stamp(lab_support):
    """Names, sizes and times of what the spare's rust-analyzer read of lab-support: its manifest,
    its sources and the workspace's Cargo.lock. The spare never reads them again."""
    if not lab_support:
        return None
    root = os.path.realpath(lab_support)
    paths = [os.path.join(root, "Cargo.toml"), os.path.join(os.path.dirname(root), "Cargo.lock")]
    for folder, _, files in os.walk(os.path.join(root, "src")):
        paths.extend(os.path.join(folder, f) for f in files)
    stamp = []
    for path in sorted(paths):
        try:
            st = os.stat(path)
            stamp.append((path, st.st_size, st.st_mtime_ns))
        except OSError:
            stamp.append((path, None, None))
    return stamp


class Spare:
    """One spare kernel: its process, its connection, and the task that starts and warms it up."""

    def __init__(self, argv, cwd, env, log, delay=0):
        self.argv, self.cwd, self.env, self.log = argv, cwd, dict(env), log
        self.lab_support = lab_support_for(cwd, self.env)
        self.process = None
        self.connection_file = None
        self.ports = {}
        self.stamp = None
        _waiting.add(self)
        self.task = asyncio.ensure_future(self._run(delay))

    async def _run(self, delay):
        """True once the spare runs and every warm-up cell ran cleanly."""
        try:
            await asyncio.sleep(delay)
            self._launch()
            return await self._warm_up(warm_up_cells(self.lab_support) if self.lab_support else [])
        except asyncio.CancelledError:
            raise
        except Exception as error:  # no spare this time: launches start cold
            self.log.warning("lab spare kernel: could not start a spare: %s", error)
            # Not left running unused, holding its memory and a slot.
            self._end_process()
            return False

    def _launch(self):
        self.connection_file = os.path.join(jupyter_runtime_dir(), f"lab-spare-{uuid.uuid4()}.json")
        os.makedirs(os.path.dirname(self.connection_file), exist_ok=True)
        # Ports from jupyter_client's cache, like every kernel this server starts: a kernel started
        # while this one is still binding never gets the same port.
        cache = LocalPortCache.instance()
        self.ports = {name: cache.find_available_port("127.0.0.1") for name in PORT_NAMES}
        _, info = write_connection_file(
            self.connection_file, ip="127.0.0.1", key=uuid.uuid4().hex.encode(), kernel_name="rust", **self.ports
        )
        info["key"] = info["key"].encode() if isinstance(info["key"], str) else info["key"]
        self.info = info
        env = self.env
        env[SPARE_ENV] = "1"
        cmd = [a.replace("{connection_file}", self.connection_file) for a in self.argv]
        self.started = time.monotonic()
        # Before the kernel reads anything: a change during the warm-up counts as a change.
        self.stamp = source_stamp(self.lab_support)
        self.process = launch_kernel(cmd, env=env, cwd=self.cwd)
        self.pgid = os.getpgid(self.process.pid)

    async def _warm_up(self, cells):
        client = AsyncKernelClient()
        client.load_connection_info(self.info)
        # No heartbeat channel: `_wait_ready` and `_alive_while` watch the process instead.
        client.start_channels(hb=False)
        try:
            await self._wait_ready(client)
            for code in cells:
                errors = []

                def watch(msg, errors=errors):
                    kind = msg["header"]["msg_type"]
                    if kind == "error" or (kind == "stream" and msg["content"].get("name") == "stderr"):
                        errors.append(msg["content"].get("text") or msg["content"].get("evalue", ""))

                reply = await self._alive_while(
                    client.execute_interactive(
                        code, store_history=False, allow_stdin=False, timeout=WARM_UP_TIMEOUT, output_hook=watch
                    )
                )
                if reply["content"]["status"] != "ok" or errors:
                    self.log.warning("lab spare kernel: a warm-up cell failed, not using this spare: %s", (errors or [reply["content"]])[0])
                    return False
            self.log.info("lab spare kernel: warm in %.0f s, for %s", time.monotonic() - self.started, self.cwd)
            return True
        finally:
            client.stop_channels()

    async def _wait_ready(self, client):
        """Until the kernel answers `kernel_info` and its iopub channel delivers.

        Not jupyter_client's `wait_for_ready`: without a kernel manager it judges the kernel by its
        heartbeat, which a kernel that is still starting (its launcher copying the slot) or short of
        CPU misses for a second. Measured in hub tests with new slots (four students' kernels
        starting on two cores): 2, then 4, of a run's spares were given up as "Kernel died before
        replying to kernel_info" while they were starting, and only 2 and 1 of 4 kernel starts got a
        warm spare. The process itself says whether the kernel died."""
        deadline = time.monotonic() + WARM_UP_TIMEOUT
        while True:
            client.kernel_info()
            try:
                reply = await client.shell_channel.get_msg(timeout=1)
            except queue.Empty:
                reply = None
            if reply is not None and reply["msg_type"] == "kernel_info_reply":
                # As jupyter_client does: the reply's status messages show that iopub is
                # connected; a cell's output sent before it is would be lost.
                try:
                    await client.iopub_channel.get_msg(timeout=0.2)
                    return
                except queue.Empty:
                    pass
            if not self.alive():
                raise RuntimeError(f"the spare kernel exited ({self.process.poll()}) while starting")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the spare kernel did not answer within {WARM_UP_TIMEOUT} s")

    async def _alive_while(self, awaitable):
        """`awaitable`'s result, unless the spare's process ends first (then an error at once,
        rather than jupyter_client's timeout)."""
        task = asyncio.ensure_future(awaitable)
        try:
            while not task.done():
                await asyncio.wait({task}, timeout=0.5)
                if not task.done() and not self.alive():
                    raise RuntimeError(f"the spare kernel exited ({self.process.poll()}) while warming up")
            return task.result()
        finally:
            task.cancel()

    def warm(self):
        """Warm, running, and warmed up on today's lab-support: ready to hand over."""
        if not self.task.done() or self.task.cancelled() or self.task.exception() or not self.task.result():
            return False
        if not self.alive():
            return False
        if self.stamp != source_stamp(self.lab_support):
            self.log.info("lab spare kernel: lab-support changed since the spare read it; starting this kernel cold")
            return False
        return True

    def alive(self):
        return self.process is not None and self.process.poll() is None

    def _end_process(self):
        if self.alive():
            try:
                os.killpg(self.pgid, signal.SIGKILL)
            except OSError:
                pass
            self.process.wait()

    def kill(self):
        _waiting.discard(self)
        self._end_process()
        try:
            self.task.cancel()
        except RuntimeError:  # the event loop is already closed (at exit)
            pass
        self.forget_file()
        cache = LocalPortCache.instance()
        for port in self.ports.values():
            cache.return_port(port)
        self.ports = {}

    def forget_file(self):
        try:
            if self.connection_file:
                os.remove(self.connection_file)
        except OSError:
            pass


# The spare of this server process, for the next launch in its folder.
_spare = None
# Every spare not handed over yet, the current one and any still being killed: all go at exit.
_waiting = set()


@atexit.register
def _kill_spares():
    for spare in list(_waiting):
        spare.kill()


def _replace_spare(spare):
    global _spare
    if _spare is not None and _spare is not spare:
        _spare.kill()
    _spare = spare


# jupyter_server's own kernel manager, which the lab's replaces unless another is configured. The
# lab's lives in a module of its own: importing jupyter_server takes about a second, which every
# `jupyter execute` that loads this provisioner would pay.
DEFAULT_KERNEL_MANAGER = "jupyter_server.services.kernels.kernelmanager.ServerKernelManager"
LAB_KERNEL_MANAGER = "lab_kernel_manager.LabKernelManager"


def _jupyter_server_extension_points():
    return [{"module": "lab_kernel_pool"}]


def _load_jupyter_server_extension(server_app):
    """The lab's kernel manager for every kernel (unless the server's configuration names another),
    and with spares on, a spare as soon as the server runs, so that the first notebook opened can
    get a warm kernel too. It warms in the folder where the lab's notebooks are: the server's own
    (`cargo lab up` serves notebooks/), or its `notebooks/` (a hub student's home), since a spare
    started elsewhere moves there first."""
    kernels = server_app.kernel_manager
    if getattr(kernels, "kernel_manager_class", None) == DEFAULT_KERNEL_MANAGER:
        kernels.kernel_manager_class = LAB_KERNEL_MANAGER
        server_app.log.info("lab kernel pool: kernels are managed by LabKernelManager")
    else:
        server_app.log.warning("lab kernel pool: kernels are managed by %s, not LabKernelManager: evcxr kernels may die when a notebook connects", getattr(kernels, "kernel_manager_class", None))
    if not spares_enabled():
        return

    def start():
        if _spare is not None:
            return
        try:
            spec = server_app.kernel_spec_manager.get_kernel_spec("rust")
        except Exception as error:
            server_app.log.warning("lab spare kernel: no `rust` kernel spec, no spare: %s", error)
            return
        env = dict(os.environ)
        env.update(spec.env)
        folder = os.path.realpath(server_app.root_dir)
        if os.path.isdir(os.path.join(folder, "notebooks")):
            folder = os.path.realpath(os.path.join(folder, "notebooks"))
        _replace_spare(Spare(spec.argv, folder, env, server_app.log))

    server_app.io_loop.add_callback(start)


class SpareProvisioner(LocalProvisioner):
    """LocalProvisioner that hands over a warm spare when one is ready for the kernel's folder."""

    handed_over = False

    async def launch_kernel(self, cmd, **kwargs):
        if not spares_enabled():
            return await super().launch_kernel(cmd, **kwargs)
        cwd = os.path.realpath(kwargs.get("cwd") or os.getcwd())
        env = kwargs.get("env") or dict(os.environ)
        spare = _spare
        if spare is not None and spare.cwd == cwd and not spare.task.done():
            waited = time.monotonic()
            await asyncio.wait({spare.task}, timeout=SPARE_WAIT)
            self.log.info("lab spare kernel: waited %.1f s for the spare warming up", time.monotonic() - waited)
            # Another launch may have taken it meanwhile.
            spare = _spare
        if spare is not None and spare.cwd == cwd and spare.warm():
            info = self._take(spare, cwd)
        else:
            info = await super().launch_kernel(cmd, **kwargs)
            if spare is not None and spare.cwd == cwd and not spare.task.done():
                # Still warming up: it stays for the next launch.
                return info
        # The next spare; its warm-up runs while the student works.
        _replace_spare(Spare(self.kernel_spec.argv, cwd, env, self.log, delay=NEXT_SPARE_DELAY))
        return info

    def _take(self, spare, cwd):
        """Becomes `spare`'s provisioner: its process, its connection."""
        global _spare
        _spare = None
        _waiting.discard(spare)
        if self.ports_cached:
            # The ports pre_launch reserved for a kernel that will not be started.
            lpc = LocalPortCache.instance()
            for name in PORT_NAMES:
                lpc.return_port(self.connection_info[name])
        # The spare's ports are from the same cache: `cleanup` gives them back when this kernel ends.
        self.ports_cached = True
        spare.forget_file()
        self.process = spare.process
        self.pid = spare.process.pid
        self.pgid = spare.pgid
        self.cwd = cwd
        self.connection_info = spare.info
        self.handed_over = True
        self.log.info("lab spare kernel: handed over a warm kernel (pid %s)", self.pid)
        return spare.info

    async def post_launch(self, **kwargs):
        await super().post_launch(**kwargs)
        if not self.handed_over:
            return
        # The kernel's ports changed. jupyter_server watches a kernel's activity on its iopub port
        # and moves that watch itself after a restart it was asked for, but not after
        # jupyter_client restarts a kernel that died: move it here (twice is harmless).
        manager = self.parent
        servers = getattr(manager, "parent", None)
        kernel_id = getattr(manager, "kernel_id", None)
        if getattr(manager, "_activity_stream", None) is None or not hasattr(servers, "start_watching_activity"):
            return
        try:
            servers.stop_watching_activity(kernel_id)
            servers.start_watching_activity(kernel_id)
        except Exception as error:
            self.log.warning("lab spare kernel: could not watch the new kernel's activity: %s", error)
