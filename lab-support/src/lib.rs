//! Support crate for the adversarial-examples lab.
//!
//! One module per concept: [`data`] (datasets and images), [`model`] (the digit CNN), [`train`]
//! (gradient descent on the weights), [`grad`] (gradients with respect to the *input*),
//! [`attack`] (FGSM, PGD and the seed's targeted descent), [`plot`] (figures that render inline in
//! Jupyter). Notebooks start with:
//!
//! ```
//! use lab_support::prelude::*;
//! ```

pub mod attack;
pub mod data;
pub mod error;
pub mod grad;
pub mod model;
pub mod plot;
pub mod train;

pub use error::{LabError, Result};

/// Everything a notebook needs, in one `use`.
pub mod prelude {
    pub use crate::data::{fashion_mnist, load_drawing, load_image, mnist, Dataset};
    pub use crate::error::{LabError, Result};
    pub use crate::attack::{fgsm, pgd, targeted_descent, AttackResult, DescentConfig, Norm, PgdConfig, TraceStep};
    pub use crate::grad::{clamp_pixels, input_gradient, project_l2, project_linf, InputGradient, Objective};
    pub use crate::model::{Classifier, Prediction};
    pub use crate::plot::{BarChart, Chart, Figure, ImageGrid, LinePlot};
    pub use candle_core::{DType, Device, Tensor, Var, D};
}
