//! The MPI backend (the `mpi` cargo feature): Open MPI through the `mpi` crate. The
//! launcher (`mpirun`, `srun`) starts the ranks; `MPI_Init` joins them. Collectives are
//! called from the training thread only (MPI's single-thread level).

use mpi::Count;
use mpi::collective::SystemOperation;
use mpi::datatype::{Partition, PartitionMut};
use mpi::environment::Universe;
use mpi::topology::SimpleCommunicator;
use mpi::traits::{Communicator as _, CommunicatorCollectives as _, Root as _};

use super::communicator::{CommError, Communicator};
use super::launch::LaunchError;

/// Whether this build has the MPI backend.
pub const BUILT: bool = true;

/// `MPI_COMM_WORLD`, and the universe that finalizes MPI when dropped.
pub struct MpiWorld {
    world: SimpleCommunicator,
    _universe: Universe,
}

// SAFETY: MPI runs at its single-thread level; Recast calls collectives only from the
// training thread (the plugin watcher and the tensor pools never touch MPI), so the
// handles are never used from two threads at once.
unsafe impl Send for MpiWorld {}
unsafe impl Sync for MpiWorld {}

/// Join the job the launcher started.
pub fn open_world() -> Result<Box<dyn Communicator>, LaunchError> {
    let universe = mpi::initialize().ok_or(LaunchError::Init("MPI was initialised already".into()))?;
    let world = universe.world();
    Ok(Box::new(MpiWorld { world, _universe: universe }))
}

fn counts(op: &'static str, values: &[usize]) -> Result<Vec<Count>, CommError> {
    values.iter().map(|&c| Count::try_from(c).map_err(|_| CommError::Shape { op, reason: format!("{c} values exceed MPI's count range") })).collect()
}

fn displacements(counts: &[Count]) -> Vec<Count> {
    counts.iter().scan(0, |at, &c| Some(std::mem::replace(at, *at + c))).collect()
}

impl Communicator for MpiWorld {
    fn rank(&self) -> usize {
        self.world.rank() as usize
    }

    fn size(&self) -> usize {
        self.world.size() as usize
    }

    fn backend(&self) -> &'static str {
        "mpi"
    }

    fn all_reduce_sum(&self, values: &mut [f32]) -> Result<(), CommError> {
        let send = values.to_vec();
        self.world.all_reduce_into(&send[..], values, SystemOperation::sum());
        Ok(())
    }

    fn all_reduce_sum_f64(&self, values: &mut [f64]) -> Result<(), CommError> {
        let send = values.to_vec();
        self.world.all_reduce_into(&send[..], values, SystemOperation::sum());
        Ok(())
    }

    fn broadcast(&self, root: usize, bytes: &mut Vec<u8>) -> Result<(), CommError> {
        let root = self.world.process_at_rank(root as i32);
        let mut len = bytes.len() as u64;
        root.broadcast_into(&mut len);
        bytes.resize(len as usize, 0);
        root.broadcast_into(&mut bytes[..]);
        Ok(())
    }

    fn all_gather(&self, mine: &[f32]) -> Result<Vec<f32>, CommError> {
        let mut all = vec![0f32; mine.len() * self.size()];
        self.world.all_gather_into(mine, &mut all[..]);
        Ok(all)
    }

    fn reduce_scatter_sum(&self, values: &[f32]) -> Result<Vec<f32>, CommError> {
        let size = self.size();
        if !values.len().is_multiple_of(size) {
            return Err(CommError::Shape { op: "reduce-scatter", reason: format!("{} values do not split into {size} equal blocks", values.len()) });
        }
        let mut mine = vec![0f32; values.len() / size];
        self.world.reduce_scatter_block_into(values, &mut mine[..], SystemOperation::sum());
        Ok(mine)
    }

    fn all_to_all(&self, send: &[f32], send_counts: &[usize]) -> Result<(Vec<f32>, Vec<usize>), CommError> {
        let size = self.size();
        if send_counts.len() != size || send_counts.iter().sum::<usize>() != send.len() {
            return Err(CommError::Shape { op: "all-to-all", reason: format!("counts {send_counts:?} must be one per rank ({size}) and add up to {}", send.len()) });
        }
        let send_counts = counts("all-to-all", send_counts)?;
        let mut recv_counts = vec![0 as Count; size];
        self.world.all_to_all_into(&send_counts[..], &mut recv_counts[..]);
        let total: usize = recv_counts.iter().map(|&c| c as usize).sum();
        let mut received = vec![0f32; total];
        {
            let send_displs = displacements(&send_counts);
            let recv_displs = displacements(&recv_counts);
            let outgoing = Partition::new(send, &send_counts[..], &send_displs[..]);
            let mut incoming = PartitionMut::new(&mut received[..], &recv_counts[..], &recv_displs[..]);
            self.world.all_to_all_varcount_into(&outgoing, &mut incoming);
        }
        Ok((received, recv_counts.iter().map(|&c| c as usize).collect()))
    }

    fn barrier(&self) -> Result<(), CommError> {
        self.world.barrier();
        Ok(())
    }

    fn abort(&self, code: i32) -> ! {
        self.world.abort(code)
    }
}
