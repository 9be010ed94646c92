//! Support crate for the adversarial-examples lab.
//!
//! One module per concept, in layers: a module uses only modules of the layers above it in this
//! list (a test in the lab tool, `lab-support/tests/layers.rs`, checks it).
//!
//! - Leaves: [`error`] (the one error type), [`notebook`] (how the crate behaves in the evcxr
//!   kernel: short panic reports, progress lines, calling a student's function), [`rng`] (a seeded
//!   generator), [`validate`] (checks on what a user hands in).
//! - [`data`] (datasets, IDX files, file integrity, images), [`model`] (the digit CNN, plain and
//!   robust, with its fast CPU kernels), [`grad`] (gradients with respect to the *input*),
//!   [`attack`] (FGSM, PGD with restarts, APGD, BPDA, targeted descent, a PGD robustness sweep),
//!   [`blackbox`] (a model you may only query, score-only attacks, transfer), [`certify`] (interval
//!   bound propagation: robustness proved, not tested), [`smoothing`] (randomized smoothing's
//!   votes and statistics), [`evaluation`] (the
//!   worst case of white- and black-box attacks, digit by digit: one honest robustness figure),
//!   [`train`] (gradient descent on the weights, plain or adversarial), [`approx`] (the tiny
//!   approximator of Problem #1).
//! - [`plot`] (charts that render inline in Jupyter and know no model), [`figures`] (the lab's own
//!   figures: charts filled from a model's answers), [`checklist`] (sanity checks that flag
//!   gradient masking).
//! - [`check`] (the notebooks' instant checks, one file per notebook).
//!
//! Notebooks start with:
//!
//! ```
//! use lab_support::prelude::*;
//! ```

pub mod error;
pub mod notebook;
pub mod rng;
pub mod validate;

pub mod approx;
pub mod attack;
pub mod blackbox;
pub mod certify;
pub mod data;
pub mod evaluation;
pub mod grad;
pub mod model;
pub mod smoothing;
pub mod train;

pub mod checklist;
pub mod figures;
pub mod plot;

pub mod check;

/// The tensor library, for notebooks that need more than the prelude.
pub use candle_core;
pub use candle_nn;
pub use error::{LabError, Result};

/// Everything a notebook needs, in one `use`.
pub mod prelude {
    pub use crate::approx::{log2_points, Mlp};
    pub use crate::attack::{
        apgd, bpda_pgd, epsilon_sweep, fgsm, pgd, targeted_descent, ApgdConfig, ApgdLoss, AttackResult, DescentConfig,
        Norm, PgdConfig, SweepPoint, TraceStep,
    };
    pub use crate::blackbox::{
        simba, square_attack, transfer_rates, BlackBox, QueryAttack, SimbaConfig, SquareConfig, TransferRates,
    };
    pub use crate::certify::{certified_accuracy, Bounds};
    pub use crate::check::{self, Challenge};
    pub use crate::checklist::{checklist, Checklist, ChecklistItem};
    pub use crate::data::{
        fashion_mnist, load_digit_png, load_drawing, load_image, mnist, photo, save_digit_png, Dataset,
    };
    pub use crate::error::{LabError, Result};
    pub use crate::evaluation::{evaluate, robustness_table, worst_case_sweep, Attack, Evaluation, Robustness};
    pub use crate::figures::crafting_progress;
    pub use crate::grad::{
        clamp_pixels, input_gradient, noise_images, normalize_l2, per_image_l2, per_image_linf, project_l2,
        project_linf, AttackLoss, InputGradient, Objective,
    };
    pub use crate::model::{max_pool_2x2, top1, Classifier, Defense, Prediction};
    pub use crate::notebook::{Progress, ShowValue};
    pub use crate::plot::{indexed, BarChart, Chart, Figure, ImageGrid, LinePlot, Stack, Table};
    pub use crate::rng::SeededRng;
    pub use crate::smoothing::{clopper_pearson_lower, normal_quantile, Smoothed};
    pub use crate::train::{train_on, TrainConfig};
    pub use candle_core::{DType, Device, Tensor, Var, D};
    pub use candle_nn::{loss, ops, AdamW, Optimizer, ParamsAdamW};
}
