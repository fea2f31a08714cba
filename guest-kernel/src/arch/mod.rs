//! Architecture layer: owns every `unsafe` hardware access; the rest of the kernel is safe code over it.

pub mod x86_64;
