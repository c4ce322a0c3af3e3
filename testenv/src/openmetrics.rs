//! Bulky test data for TSDBs: OpenMetrics text of pseudo-random samples, for `promtool tsdb
//! create-blocks-from openmetrics`. Does I/O (writes to the given writer).

use std::io::Write;

/// Writes the gauge `metric` with `series` series (label `series="<i>"`) of `samples` samples each, `step`
/// seconds apart from `first` (unix s), and the closing `# EOF`. The values are pseudo-random (xorshift64* from
/// `seed`) with random decimal exponents from 1e-20 to 1e20, which the TSDB's XOR encoding cannot compress: a
/// block holds about 9 bytes per sample.
pub fn write_random_samples(
    out: &mut impl Write,
    metric: &str,
    series: u64,
    samples: u64,
    first: u64,
    step: u64,
    seed: u64,
) -> std::io::Result<()> {
    writeln!(out, "# HELP {metric} Pseudo-random samples.\n# TYPE {metric} gauge")?;
    let mut state = seed | 1;
    for i in 0..series {
        for k in 0..samples {
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            let r = state.wrapping_mul(0x2545_f491_4f6c_dd1d);
            #[allow(clippy::cast_precision_loss, clippy::cast_possible_truncation)] // any float will do; r % 41 < 41
            let v = ((r >> 11) as f64 / (1u64 << 53) as f64) * 10f64.powi((r % 41) as i32 - 20);
            writeln!(out, "{metric}{{series=\"{i}\"}} {v:e} {}", first + k * step)?;
        }
    }
    writeln!(out, "# EOF")
}
