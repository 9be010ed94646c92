"""A warm spare kernel for the lab's `rust` kernel.

After a kernel start or restart, the first two cells of a lab notebook (`:dep lab-support` and the one
that loads the model) wait about 11 s: evcxr's embedded rust-analyzer reads and analyses the ~165
crates under lab-support before it can tell the types of a cell's variables. That work cannot be
made smaller from outside evcxr, but it can be done before the student asks for it.

`SpareProvisioner` is a jupyter_client kernel provisioner (the `kernel_provisioner` named in the
kernel spec). When spares are on (LAB_SPARE_KERNEL=1 in the Jupyter server's environment; `cargo
lab up` sets it), every kernel launch leaves one spare kernel behind, started in the same folder,
which runs the lab's first two cells and then drops the variables they made. The next launch in
that folder (a restart, or another notebook) takes the spare over instead of starting a kernel
from nothing: the student gets a fresh kernel, with no variables, whose rust-analyzer and build
are already warm. A spare that is still warming up is waited for (it is ahead of a cold start); a
spare that failed or died is thrown away and the kernel starts cold, as without spares.

The module is also a Jupyter server extension (enabled in the venv by `cargo lab up`): with spares
on, a server makes the first spare for its own folder as soon as it starts, so that even the first
notebook opened gets a warm kernel.

Without LAB_SPARE_KERNEL=1 (the test runner's `jupyter execute`, the hub's servers unless the
instructor asks) this is jupyter_client's own LocalProvisioner, unchanged, and the extension does
nothing.

The price: one more kernel per Jupyter server, idle, holding its memory (measured in the README),
and a warm-up of about 10 s of CPU after every kernel launch.
"""

import asyncio
import atexit
import os
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
# Seconds between a kernel launch and the start of the next spare: the new kernel's first cells
# (`:dep`, loading the model: about 2 s with a warm spare) run without the warm-up beside them. A
# launch that wants the spare sooner cuts the delay short.
NEXT_SPARE_DELAY = 10


def spares_enabled():
    return os.environ.get("LAB_SPARE_KERNEL") == "1"


def warm_up_cells(lab_support):
    """The lab's first two cells, then a cell that drops what they defined.

    evcxr makes the `:dep` path absolute; the spare gives it absolute already, so the student's
    `:dep lab-support = { path = "../lab-support" }` finds the same dependency and nothing is
    reloaded. `drop` makes evcxr forget the variables, so the kernel handed over has none.
    """
    path = os.path.realpath(lab_support).replace("\\", "\\\\").replace('"', '\\"')
    return [
        f':dep lab-support = {{ path = "{path}" }}\nuse lab_support::prelude::*;',
        "let lab_spare_model = Classifier::pretrained()?;\nlet lab_spare_test = mnist::test()?;",
        "drop(lab_spare_model);\ndrop(lab_spare_test);",
    ]


class Spare:
    """One spare kernel: its process, its connection, and the task that warms it up."""

    def __init__(self, argv, cwd, env, log, delay=0):
        self.argv, self.cwd, self.env, self.log = argv, cwd, dict(env), log
        self.process = None
        self.connection_file = None
        self.ports = {}
        # Set when a launch wants this spare now: the delay is cut short.
        self.wanted = asyncio.Event()
        self.task = asyncio.ensure_future(self._run(delay))

    async def _run(self, delay):
        """True once the spare runs and every warm-up cell ran cleanly."""
        if delay:
            try:
                await asyncio.wait_for(self.wanted.wait(), delay)
            except asyncio.TimeoutError:
                pass
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
        self.process = launch_kernel(cmd, env=env, cwd=self.cwd)
        self.pgid = os.getpgid(self.process.pid)
        lab_support = env.get("LAB_SUPPORT_DIR", "")
        return await self._warm_up(warm_up_cells(lab_support) if lab_support else [])

    async def _warm_up(self, cells):
        """True once every warm-up cell ran cleanly."""
        client = AsyncKernelClient()
        client.load_connection_info(self.info)
        client.start_channels()
        try:
            await client.wait_for_ready(timeout=WARM_UP_TIMEOUT)
            for code in cells:
                errors = []

                def watch(msg, errors=errors):
                    kind = msg["header"]["msg_type"]
                    if kind == "error" or (kind == "stream" and msg["content"].get("name") == "stderr"):
                        errors.append(msg["content"].get("text") or msg["content"].get("evalue", ""))

                reply = await client.execute_interactive(
                    code, store_history=False, allow_stdin=False, timeout=WARM_UP_TIMEOUT, output_hook=watch
                )
                if reply["content"]["status"] != "ok" or errors:
                    self.log.warning("lab spare kernel: warm-up cell failed, not using it: %s", (errors or [reply["content"]])[0])
                    return False
            self.log.info("lab spare kernel: warm in %.0f s, for %s", time.monotonic() - self.started, self.cwd)
            return True
        except Exception as error:  # a dead kernel, a timeout: the next launch starts cold
            self.log.warning("lab spare kernel: warm-up failed, not using it: %s", error)
            return False
        finally:
            client.stop_channels()

    async def ready(self):
        """True when the spare is warm and running, waiting for its warm-up (not for its delay)."""
        self.wanted.set()
        try:
            return await self.task and self.alive()
        except Exception as error:  # it could not even start: the launch starts a kernel cold
            self.log.warning("lab spare kernel: could not start a spare: %s", error)
            return False

    def alive(self):
        return self.process is not None and self.process.poll() is None

    def kill(self):
        if self.alive():
            try:
                os.killpg(self.pgid, signal.SIGKILL)
            except OSError:
                pass
            self.process.wait()
        try:
            self.task.cancel()
        except RuntimeError:  # the event loop is already closed (at exit)
            pass
        self.forget_file()
        self.return_ports()

    def return_ports(self):
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


# One spare per Jupyter server process.
_spare = None


def _kill_spare():
    global _spare
    if _spare is not None:
        _spare.kill()
        _spare = None


atexit.register(_kill_spare)


def _jupyter_server_extension_points():
    return [{"module": "lab_kernel_pool"}]


def _load_jupyter_server_extension(server_app):
    """A spare for the server's own folder as soon as it runs, so that the first notebook opened
    gets a warm kernel too (`cargo lab up` serves notebooks/, where the lab's notebooks are)."""
    if not spares_enabled():
        return

    def start():
        global _spare
        if _spare is not None:
            return
        try:
            spec = server_app.kernel_spec_manager.get_kernel_spec("rust")
        except Exception as error:
            server_app.log.warning("lab spare kernel: no `rust` kernel spec, no spare: %s", error)
            return
        env = dict(os.environ)
        env.update(spec.env)
        _spare = Spare(spec.argv, os.path.realpath(server_app.root_dir), env, server_app.log)

    server_app.io_loop.add_callback(start)


class SpareProvisioner(LocalProvisioner):
    """LocalProvisioner that hands over a warm spare when one is ready for the kernel's folder."""

    async def launch_kernel(self, cmd, **kwargs):
        global _spare
        if not spares_enabled():
            return await super().launch_kernel(cmd, **kwargs)
        cwd = os.path.realpath(kwargs.get("cwd") or os.getcwd())
        env = kwargs.get("env") or dict(os.environ)
        spare, _spare = _spare, None
        taken = None
        if spare is not None and spare.cwd == cwd:
            if not spare.task.done():
                self.log.info("lab spare kernel: waiting for the spare's warm-up to end")
            if await spare.ready():
                taken = spare
        if taken is None and spare is not None:
            spare.kill()
        if taken is not None:
            info = self._take(taken, cwd)
        else:
            info = await super().launch_kernel(cmd, **kwargs)
        # The spare for the next launch; its warm-up runs while the student works, starting a few
        # seconds from now so that the first cells of this kernel have the machine to themselves.
        # Another launch may have made one meanwhile (two notebooks opened together): one spare is
        # enough.
        spare = Spare(self.kernel_spec.argv, cwd, env, self.log, delay=NEXT_SPARE_DELAY)
        if _spare is not None:
            _spare.kill()
        _spare = spare
        return info

    def _take(self, spare, cwd):
        """Becomes `spare`'s provisioner: its process, its connection."""
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
        self.log.info("lab spare kernel: handed over a warm kernel (pid %s)", self.pid)
        return spare.info
