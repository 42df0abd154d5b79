//! The bridge between `u8` frames at the I/O edge and the model's tensors:
//! `(T, H, W, 3)` u8 in `[0, 255]` <-> `(1, 3, T, H, W)` f32 in `[-1, 1]`.

use candle_core::{DType, Device, Tensor};
use ndarray::{Array4, ArrayView4};

use super::Frames;
use crate::{invalid, Result};

/// `(T, H, W, 3)` u8 -> `(1, 3, T, H, W)` f32 in `[-1, 1]` on `device`.
pub fn frames_to_tensor(frames: &ArrayView4<u8>, device: &Device) -> Result<Tensor> {
    let (t, h, w, c) = frames.dim();
    // channels first: (3, T, H, W), then scale 0..255 -> -1..1
    let data: Vec<f32> = frames
        .view()
        .permuted_axes([3, 0, 1, 2])
        .iter()
        .map(|&v| v as f32 / 127.5 - 1.0)
        .collect();
    Ok(Tensor::from_vec(data, (1, c, t, h, w), device)?)
}

/// `(1, 3, T, H, W)` or `(3, T, H, W)` in `[-1, 1]` (any float dtype, any
/// device) -> `(T, H, W, 3)` u8, clamping values outside the range.
pub fn tensor_to_frames(x: &Tensor) -> Result<Frames> {
    let x = match x.rank() {
        5 if x.dim(0)? == 1 => x.squeeze(0)?,
        4 => x.clone(),
        _ => invalid!(
            "expected a (1, 3, T, H, W) or (3, T, H, W) video tensor, got shape {:?}",
            x.dims()
        ),
    };
    let (c, t, h, w) = x.dims4()?;
    if c != 3 {
        invalid!("expected 3 colour channels, got {c} (shape {:?})", x.dims());
    }
    let x = x
        .to_device(&Device::Cpu)?
        .to_dtype(DType::F32)?
        .permute((1, 2, 3, 0))?
        .contiguous()?;
    let data: Vec<u8> = x
        .flatten_all()?
        .to_vec1::<f32>()?
        .into_iter()
        .map(|v| ((v.clamp(-1.0, 1.0) + 1.0) * 127.5).round() as u8)
        .collect();
    let frames = Array4::from_shape_vec((t, h, w, 3), data)
        .map_err(|e| crate::Error::Invalid(e.to_string()))?;
    Ok(frames)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn u8_tensor_u8_is_exact_and_channels_first() {
        let frames = Array4::from_shape_fn((2, 3, 4, 3), |(f, y, x, c)| {
            (f * 97 + y * 31 + x * 7 + c * 50) as u8
        });
        let x = frames_to_tensor(&frames.view(), &Device::Cpu).unwrap();
        assert_eq!(x.dims(), &[1, 3, 2, 3, 4]);
        let v: f32 = x
            .get(0)
            .unwrap()
            .get(2)
            .unwrap()
            .get(1)
            .unwrap()
            .get(2)
            .unwrap()
            .get(3)
            .unwrap()
            .to_scalar()
            .unwrap();
        assert_eq!(v, frames[[1, 2, 3, 2]] as f32 / 127.5 - 1.0);
        assert_eq!(tensor_to_frames(&x).unwrap(), frames);
    }

    #[test]
    fn out_of_range_values_clamp_and_bad_shapes_fail() {
        let x = Tensor::new(&[-3f32, 3.0, 0.0], &Device::Cpu)
            .unwrap()
            .reshape((3, 1, 1, 1))
            .unwrap();
        let f = tensor_to_frames(&x).unwrap();
        assert_eq!(f.as_slice().unwrap(), &[0, 255, 128]);
        let bad = Tensor::zeros((2, 1, 1, 1), DType::F32, &Device::Cpu).unwrap();
        assert!(tensor_to_frames(&bad).is_err());
    }
}
