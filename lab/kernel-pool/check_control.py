"""The kernel test's check of `LabKernelManager` (`cargo lab test` runs it with the venv's Python).

jupyter_server's nudge sends `kernel_info_request` on a transient control channel and closes it as
soon as another answer is back; evcxr_jupyter exits when its answer finds the channel gone (see
lab_kernel_pool's docstring). Here a fresh lab kernel gets two requests on a control channel of the
lab's kernel manager, closed 2 ms later, as many times as there are rounds (a restart between
rounds: measured, a kernel is most at risk at its first control channel). After each round the
kernel must be alive and run a cell, and the channel must have stayed open for the delay and then
closed. Prints what went wrong, one line each, and exits 1 if anything did.

With jupyter_server's own kernel manager in place of the lab's, the same close killed the kernel
in 3 of 23 tries (measured on the lab's 2-core machine), so one run of this check
misses it more often than not; the check that the channel stays open fails every time.
"""

import asyncio
import sys

import lab_kernel_manager
from lab_kernel_manager import LabKernelManager

ROUNDS = 4
# Shorter than the server's delay, to keep the test short; the mechanism is the same.
DELAY = 2


async def check(cwd):
    lab_kernel_manager.CONTROL_CLOSE_DELAY = DELAY
    problems = []
    manager = LabKernelManager(kernel_name="rust")
    await manager.start_kernel(cwd=cwd)
    try:
        for round in range(1, ROUNDS + 1):
            if round > 1:
                await manager.restart_kernel(now=True)
            client = manager.client()
            client.start_channels()
            try:
                await client.wait_for_ready(timeout=120)
                control = manager.connect_control()
                for _ in range(2):
                    manager.session.send(control, "kernel_info_request")
                await asyncio.sleep(0.002)
                control.close()
                if control.closed():
                    problems.append(f"round {round}: the control channel closed at once, not {DELAY} s later")
                await asyncio.sleep(DELAY + 1)
                if not control.closed():
                    problems.append(f"round {round}: the control channel was still open {DELAY + 1} s after close()")
                if not await manager.is_alive():
                    problems.append(f"round {round}: the kernel's process died after its control channel closed early")
                    break
                shown = []

                def keep(msg):
                    if msg["header"]["msg_type"] == "execute_result":
                        shown.append(msg["content"]["data"].get("text/plain", ""))

                reply = await client.execute_interactive("1 + 2", timeout=120, output_hook=keep)
                if reply["content"]["status"] != "ok" or shown != ["3"]:
                    problems.append(f"round {round}: `1 + 2` answered {reply['content']['status']} with {shown}")
            finally:
                client.stop_channels()
    finally:
        await manager.shutdown_kernel(now=True)
    return problems


def main():
    problems = asyncio.run(check(sys.argv[1] if len(sys.argv) > 1 else "."))
    for problem in problems:
        print(problem)
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
