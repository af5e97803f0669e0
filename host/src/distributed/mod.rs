//! Training across processes on the engines clusters already have: a launcher (`mpirun`,
//! Slurm's `srun`) starts one process per rank, and every collective goes through one
//! [`Communicator`] trait, implemented by MPI (the `mpi` cargo feature, Open MPI) and by
//! a world of one process ([`SingleProcess`]) that makes a plain run behave exactly as
//! before. [`Layout`] splits the world into data-parallel and expert-parallel groups as
//! Megatron-Core does, [`ExpertParallelDispatcher`] moves an MoE layer's rows to the
//! ranks of their experts and back; [`launch`] reads the launcher's environment and
//! opens the backend, or says how to build one.
//!
//! ```
//! use recast::distributed::{Communicator, SingleProcess};
//! let comm = SingleProcess;
//! let mut grads = vec![0.5f32, -1.0];
//! comm.all_reduce_sum(&mut grads)?; // one rank: the sum is itself
//! assert_eq!(grads, [0.5, -1.0]);
//! # Ok::<(), recast::distributed::CommError>(())
//! ```

pub mod comm_plan;
mod communicator;
pub mod config;
mod expert_parallel;
pub mod launch;
mod layout;
// The backend registry: the only place that knows which engines this build has.
#[cfg(feature = "mpi")]
mod mpi;
#[cfg(not(feature = "mpi"))]
#[path = "no_mpi.rs"]
mod mpi;
mod single;
pub mod watchdog;

pub use communicator::{CommError, Communicator, check_collectives};
pub use config::{Backend, DistributedConfig, LayoutOverride};
pub use expert_parallel::ExpertParallelDispatcher;
pub use layout::{Layout, LayoutError};
pub use single::SingleProcess;
