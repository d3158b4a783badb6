//! Run-time selection of vector widths for the few loops of our own inside the plan.
//!
//! The loops are plain arithmetic the compiler vectorises; [`multiversion!`] builds a function
//! body for AVX-512 and AVX2 besides the baseline (SSE2 on x86-64, NEON on aarch64) and picks
//! one by what the CPU has, so one binary runs everywhere at full width. `f32::mul_add` is one
//! instruction in the AVX-512 and AVX2 (with FMA) builds and on aarch64; only the x86-64 baseline
//! (CPUs older than AVX2) calls libm for it: slower there, the same result everywhere.

/// Defines `fn $name(args) -> ret { body }` compiled three times on x86-64 (AVX-512, AVX2,
/// baseline) and dispatched by CPU features at each call (the feature test is a cached load).
/// Elsewhere it is the plain function.
macro_rules! multiversion {
    ($(#[$meta:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$meta])*
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            fn body($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512bw")]
                unsafe fn avx512($($arg: $ty),*) $(-> $ret)? {
                    body($($arg),*)
                }
                #[target_feature(enable = "avx2,fma")]
                unsafe fn avx2($($arg: $ty),*) $(-> $ret)? {
                    body($($arg),*)
                }
                if std::arch::is_x86_feature_detected!("avx512f") && std::arch::is_x86_feature_detected!("avx512bw") {
                    // SAFETY: the CPU has the features the function is compiled for.
                    return unsafe { avx512($($arg),*) };
                }
                if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
                    // SAFETY: as above.
                    return unsafe { avx2($($arg),*) };
                }
            }
            body($($arg),*)
        }
    };
}

pub(crate) use multiversion;
