//! Where a run computes: the run config's `[compute] device`, `"cpu"` (the default) or
//! `"cuda"` / `"cuda:N"`. CUDA needs a `recast` built with the `cuda` feature
//! (`scripts/cuda-build.sh`); a CPU-only build says so instead of failing later.

use std::fmt;

use candle_core::Device;
use serde::{Deserialize, Serialize};

/// A device named in the run config or on the command line.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum ComputeDevice {
    /// The CPU (candle's CPU backend with Recast's fused ops and BLAS).
    #[default]
    Cpu,
    /// The CUDA GPU with this ordinal.
    Cuda(usize),
}

/// Why a device cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("unknown device {0:?}: use \"cpu\", \"cuda\" or \"cuda:N\"")]
    Unknown(String),
    #[error("device \"{0}\": this recast was built without CUDA (build with scripts/cuda-build.sh, i.e. `--features cuda`)")]
    NotBuilt(ComputeDevice),
    #[error("device \"{device}\": {cause}")]
    Open { device: ComputeDevice, cause: String },
}

impl ComputeDevice {
    /// The candle device; opening a CUDA device initialises the driver.
    pub fn open(self) -> Result<Device, DeviceError> {
        match self {
            ComputeDevice::Cpu => Ok(Device::Cpu),
            ComputeDevice::Cuda(ordinal) => match crate::cuda::open_device(ordinal) {
                Some(opened) => opened.map_err(|e| DeviceError::Open { device: self, cause: e.to_string() }),
                None => Err(DeviceError::NotBuilt(self)),
            },
        }
    }
}

impl fmt::Display for ComputeDevice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ComputeDevice::Cpu => f.write_str("cpu"),
            ComputeDevice::Cuda(0) => f.write_str("cuda"),
            ComputeDevice::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

impl std::str::FromStr for ComputeDevice {
    type Err = DeviceError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "cpu" => Ok(ComputeDevice::Cpu),
            "cuda" => Ok(ComputeDevice::Cuda(0)),
            _ => s.strip_prefix("cuda:").and_then(|n| n.parse().ok()).map(ComputeDevice::Cuda).ok_or_else(|| DeviceError::Unknown(s.into())),
        }
    }
}

impl TryFrom<String> for ComputeDevice {
    type Error = DeviceError;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<ComputeDevice> for String {
    fn from(d: ComputeDevice) -> String {
        d.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::ComputeDevice;

    #[test]
    fn names_round_trip_and_bad_names_are_refused() {
        for (text, device) in [("cpu", ComputeDevice::Cpu), ("cuda", ComputeDevice::Cuda(0)), ("cuda:3", ComputeDevice::Cuda(3))] {
            assert_eq!(text.parse::<ComputeDevice>().expect("parses"), device);
            assert_eq!(device.to_string(), text);
        }
        assert_eq!("cuda:0".parse::<ComputeDevice>().expect("parses"), ComputeDevice::Cuda(0));
        for bad in ["gpu", "cuda:", "cuda:x", "CPU"] {
            assert!(bad.parse::<ComputeDevice>().is_err(), "{bad}");
        }
    }

    #[test]
    fn a_cpu_build_names_the_missing_feature() {
        if crate::cuda::BUILT {
            return;
        }
        let e = ComputeDevice::Cuda(0).open().expect_err("no CUDA in this build").to_string();
        assert!(e.contains("without CUDA") && e.contains("cuda-build.sh"), "{e}");
    }
}
