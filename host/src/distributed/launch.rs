//! Joining the job a launcher started: `mpirun` (Open MPI) and Slurm's `srun` say in
//! the environment how many ranks there are and which one this is. Without a launcher
//! the world is this one process and nothing is initialised.

use std::sync::{Arc, Mutex};

use super::communicator::Communicator;
use super::config::Backend;
use super::single::SingleProcess;

/// Why this process cannot join the job.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    /// The launcher started several ranks but this build has no engine for them.
    #[error("the launcher started {world} processes, but this recast was built without the {backend} backend; build it with: {how}")]
    NotBuiltForWorld { world: usize, backend: &'static str, how: &'static str },
    /// The backend is not part of this build.
    #[error("this recast was built without the {backend} backend; build it with: {how}")]
    NotBuilt { backend: &'static str, how: &'static str },
    /// The engine failed to start.
    #[error("cannot initialise the collectives: {0}")]
    Init(String),
}

/// What the launcher's environment says about this process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LaunchEnv {
    /// Processes in the job.
    pub world: usize,
    /// This process's rank.
    pub rank: usize,
    /// Its rank among the processes on this node (which GPU it drives).
    pub local_rank: usize,
    /// Which launcher set them, or `"none"`.
    pub launcher: &'static str,
}

impl LaunchEnv {
    /// Read the environment of this process.
    pub fn detect() -> Self {
        Self::from_vars(|name| std::env::var(name).ok())
    }

    /// Read launcher variables through `var` (Open MPI's, then PMI's, then Slurm's).
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Self {
        let number = |name: &str| var(name).and_then(|v| v.trim().parse::<usize>().ok());
        let launchers: [(&'static str, &str, &str, &str); 3] = [
            ("mpirun", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_LOCAL_RANK"),
            ("pmi", "PMI_SIZE", "PMI_RANK", "MPI_LOCALRANKID"),
            ("srun", "SLURM_NTASKS", "SLURM_PROCID", "SLURM_LOCALID"),
        ];
        for (launcher, size, rank, local) in launchers {
            if let (Some(world), Some(rank)) = (number(size), number(rank))
                && world >= 1
                && rank < world
            {
                return LaunchEnv { world, rank, local_rank: number(local).unwrap_or(0), launcher };
            }
        }
        LaunchEnv { world: 1, rank: 0, local_rank: 0, launcher: "none" }
    }
}

/// The communicator of this process: a world of one without a launcher (or a launcher
/// that started one process), else the engine `backend` names (`auto`: MPI on the CPU).
pub fn open(env: &LaunchEnv, backend: Backend) -> Result<Box<dyn Communicator>, LaunchError> {
    if env.world == 1 {
        return Ok(Box::new(SingleProcess));
    }
    match backend {
        Backend::Auto | Backend::Mpi => super::mpi::open_world().map_err(|e| match e {
            LaunchError::NotBuilt { backend, how } => LaunchError::NotBuiltForWorld { world: env.world, backend, how },
            other => other,
        }),
        Backend::Nccl => Err(LaunchError::NotBuiltForWorld { world: env.world, backend: "nccl", how: "scripts/cuda-build.sh (the NCCL backend is not part of this build yet; use backend = \"mpi\")" }),
    }
}

/// The job's communicator, opened once per process (an engine such as MPI initialises
/// once): the first call joins the job, later calls share it.
static WORLD: Mutex<Option<Arc<dyn Communicator>>> = Mutex::new(None);

/// This process's communicator over the whole job, opened on first use.
pub fn world(backend: Backend) -> Result<Arc<dyn Communicator>, LaunchError> {
    let mut world = WORLD.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(comm) = world.as_ref() {
        return Ok(comm.clone());
    }
    let comm: Arc<dyn Communicator> = Arc::from(open(&LaunchEnv::detect(), backend)?);
    *world = Some(comm.clone());
    Ok(comm)
}

/// The job ends normally: let go of the communicator, so the engine shuts down
/// (`MPI_Finalize`) once nothing else holds it.
pub fn finish() {
    WORLD.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).take();
}

/// The job ends in an error on this rank: end every rank with `code` (the others may be
/// waiting in a collective for this one). Returns when this process is the whole job.
pub fn abort_on_error(code: i32) {
    let world = WORLD.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).clone();
    if let Some(comm) = world.filter(|c| c.size() > 1) {
        comm.abort(code);
    }
}

/// Whether this build can join a job of several processes over MPI.
pub fn mpi_built() -> bool {
    super::mpi::BUILT
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> LaunchEnv {
        LaunchEnv::from_vars(|name| pairs.iter().find(|(k, _)| *k == name).map(|(_, v)| v.to_string()))
    }

    #[test]
    fn launchers_are_read_from_their_variables() {
        assert_eq!(env(&[]), LaunchEnv { world: 1, rank: 0, local_rank: 0, launcher: "none" });
        let e = env(&[("OMPI_COMM_WORLD_SIZE", "4"), ("OMPI_COMM_WORLD_RANK", "3"), ("OMPI_COMM_WORLD_LOCAL_RANK", "1")]);
        assert_eq!(e, LaunchEnv { world: 4, rank: 3, local_rank: 1, launcher: "mpirun" });
        assert_eq!(env(&[("SLURM_NTASKS", "2"), ("SLURM_PROCID", "1")]).launcher, "srun");
        assert_eq!(env(&[("SLURM_NTASKS", "2"), ("SLURM_PROCID", "7")]).world, 1, "a rank outside the world is ignored");
    }

    #[test]
    fn one_process_needs_no_engine_and_several_need_one_built() {
        let one = open(&env(&[]), Backend::Auto).expect("a world of one");
        assert_eq!((one.size(), one.backend()), (1, "single"));
        if !mpi_built() {
            let two = env(&[("OMPI_COMM_WORLD_SIZE", "2"), ("OMPI_COMM_WORLD_RANK", "0")]);
            let e = open(&two, Backend::Auto).err().expect("refused").to_string();
            assert!(e.contains("started 2 processes") && e.contains("--features mpi"), "{e}");
        }
    }
}
