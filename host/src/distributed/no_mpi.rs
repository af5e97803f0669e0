//! Stands in for the MPI backend in a build without the `mpi` feature: a job of more
//! than one rank is refused with how to build a recast that runs it.

use super::communicator::Communicator;
use super::launch::LaunchError;

/// Whether this build has the MPI backend.
pub const BUILT: bool = false;

/// Refuse: this build cannot join a multi-process job.
pub fn open_world() -> Result<Box<dyn Communicator>, LaunchError> {
    Err(LaunchError::NotBuilt { backend: "mpi", how: "cargo build --release --features mpi (needs Open MPI: apt-get install libopenmpi-dev openmpi-bin libclang-dev)" })
}
