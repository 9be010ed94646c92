"""The lab's kernel manager for Jupyter servers: jupyter_server's own, with control channels that
outlive jupyter_server's "nudge" (lab_kernel_pool's docstring says why; its server extension sets
this class for every server)."""

from jupyter_server.services.kernels.kernelmanager import ServerKernelManager
from tornado.ioloop import IOLoop

# Seconds a closed control channel stays open for the kernel's late answers: the nudge asks again
# every 0.5 s while a kernel is slow (a cold start with others beside it takes seconds to answer).
CONTROL_CLOSE_DELAY = 30


class LabKernelManager(ServerKernelManager):
    """jupyter_server's kernel manager, with control channels that close a while after they are
    asked to: evcxr_jupyter exits when a control peer goes away while it answers."""

    def connect_control(self, identity=None):
        stream = super().connect_control(identity=identity)
        close_now = stream.close

        def close_later(linger=None):
            if stream.socket is None:
                return
            stream.stop_on_recv()
            # Linger 0 then: a request still unsent after the delay would be answered to nobody.
            IOLoop.current().call_later(CONTROL_CLOSE_DELAY, close_now, 0)

        stream.close = close_later
        return stream
