//! Running the lab's notebooks in a real kernel: through nbclient's `jupyter execute`
//! (`nbclient`), or cell by cell over a Jupyter server's websocket as JupyterLab does (`kernel`),
//! and what an executed notebook's outputs say went wrong (`outputs`).

pub mod kernel;
pub mod nbclient;
pub mod outputs;

pub use kernel::RemoteKernel;
pub use nbclient::{execute_cells, run_cells, Report};
pub use outputs::{check_outputs, FIGURES};
