//! The world of one process: every collective is the identity, so a run without a
//! launcher computes exactly what it computed before distributed training existed.

use super::communicator::{CommError, Communicator};

/// The only rank of a one-process job.
#[derive(Clone, Copy, Debug, Default)]
pub struct SingleProcess;

fn one_peer(op: &'static str, counts: &[usize], len: usize) -> Result<(), CommError> {
    if counts.len() != 1 || counts[0] != len {
        return Err(CommError::Shape { op, reason: format!("one rank: counts {counts:?} must be [{len}]") });
    }
    Ok(())
}

impl Communicator for SingleProcess {
    fn rank(&self) -> usize {
        0
    }

    fn size(&self) -> usize {
        1
    }

    fn backend(&self) -> &'static str {
        "single"
    }

    fn all_reduce_sum(&self, _values: &mut [f32]) -> Result<(), CommError> {
        Ok(())
    }

    fn all_reduce_sum_f64(&self, _values: &mut [f64]) -> Result<(), CommError> {
        Ok(())
    }

    fn broadcast(&self, root: usize, _bytes: &mut Vec<u8>) -> Result<(), CommError> {
        if root != 0 {
            return Err(CommError::Shape { op: "broadcast", reason: format!("root {root} in a world of one") });
        }
        Ok(())
    }

    fn all_gather(&self, mine: &[f32]) -> Result<Vec<f32>, CommError> {
        Ok(mine.to_vec())
    }

    fn reduce_scatter_sum(&self, values: &[f32]) -> Result<Vec<f32>, CommError> {
        Ok(values.to_vec())
    }

    fn all_to_all(&self, send: &[f32], send_counts: &[usize]) -> Result<(Vec<f32>, Vec<usize>), CommError> {
        one_peer("all-to-all", send_counts, send.len())?;
        Ok((send.to_vec(), send_counts.to_vec()))
    }

    fn barrier(&self) -> Result<(), CommError> {
        Ok(())
    }

    fn split(&self, _color: usize, _key: usize) -> Result<std::sync::Arc<dyn Communicator>, CommError> {
        Ok(std::sync::Arc::new(SingleProcess))
    }

    fn abort(&self, code: i32) -> ! {
        std::process::exit(code)
    }
}

#[cfg(test)]
mod tests {
    use super::SingleProcess;
    use crate::distributed::check_collectives;

    #[test]
    fn a_world_of_one_passes_every_collective_check() {
        let done = check_collectives(&SingleProcess).expect("collectives");
        assert_eq!(done.len(), 8, "{done:?}");
    }
}
