//! Support crate for the adversarial-examples lab.
//!
//! One module per concept: [`approx`] (the tiny approximator of Problem #1), [`check`] (the
//! notebooks' instant checks), [`data`] (datasets and images), [`model`] (the digit CNN, plain and
//! robust), [`train`] (gradient descent on the weights, plain or adversarial), [`grad`] (gradients
//! with respect to the *input*, cross-entropy and margin losses), [`attack`] (FGSM, PGD with
//! restarts, BPDA, the seed's targeted descent, robustness curves), [`blackbox`] (a model you may
//! only query, score-only attacks, transfer), [`checklist`] (sanity checks that flag gradient
//! masking), [`kernels`] (the fast CPU conv blocks),
//! [`plot`] (figures that render inline in Jupyter), [`kernel`] (short panic reports in the
//! notebooks' evcxr kernel). Notebooks start with:
//!
//! ```
//! use lab_support::prelude::*;
//! ```

pub mod approx;
pub mod attack;
pub mod blackbox;
pub mod check;
pub mod checklist;
pub mod data;
pub mod error;
pub mod grad;
pub mod kernel;
pub mod kernels;
pub mod model;
pub mod plot;
pub mod train;

pub use error::{LabError, Result};
/// The tensor library, for notebooks that need more than the prelude.
pub use candle_core;
pub use candle_nn;

/// Everything a notebook needs, in one `use`.
pub mod prelude {
    pub use crate::blackbox::{simba, square_attack, transfer_rates, BlackBox, QueryAttack, SimbaConfig, SquareConfig, TransferRates};
    pub use crate::check::{self, Challenge};
    pub use crate::checklist::{checklist, Checklist, ChecklistItem};
    pub use crate::data::{fashion_mnist, load_digit_png, load_drawing, load_image, mnist, photo, save_digit_png, Dataset};
    pub use crate::error::{LabError, Result};
    pub use crate::approx::{log2_points, Mlp};
    pub use crate::attack::{bpda_pgd, epsilon_sweep, fgsm, pgd, targeted_descent, worst_case_sweep, AttackResult, DescentConfig, Evaluation, Norm, PgdConfig, SweepPoint, TraceStep};
    pub use crate::grad::{clamp_pixels, AttackLoss, input_gradient, noise_images, normalize_l2, per_image_l2, per_image_linf, project_l2, project_linf, InputGradient, Objective};
    pub use crate::kernel::{Progress, ShowValue};
    pub use crate::model::{top1, Classifier, Defense, Prediction};
    pub use crate::train::{train_on, SeededRng, TrainConfig};
    pub use crate::plot::{crafting_progress, indexed, BarChart, Chart, Figure, ImageGrid, LinePlot, Stack, Table};
    pub use candle_core::{DType, Device, Tensor, Var, D};
    pub use candle_nn::{loss, ops, AdamW, Optimizer, ParamsAdamW};
}
