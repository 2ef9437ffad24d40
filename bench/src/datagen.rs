//! Line-protocol data sets, generated in full before any timing starts.
//!
//! Values come from a hash of the line number, so batches can be built on every core in
//! parallel and the same arguments always give the same bytes.

use std::io::Write as _;

use bytes::Bytes;

/// Regions, assigned round-robin to hosts.
pub(crate) const REGIONS: [&str; 7] =
    ["us-east-1", "us-west-2", "eu-west-1", "eu-central-1", "ap-southeast-1", "ap-northeast-1", "sa-east-1"];

/// Measurements of the ingest data set, in the order they are written for each host.
pub(crate) const MEASUREMENTS: [&str; 3] = ["cpu", "mem", "disk"];

/// Request bodies ready to send.
#[derive(Debug, Default)]
pub(crate) struct Payloads {
    /// One request body each (gzip-compressed when asked for).
    pub(crate) batches: Vec<Bytes>,
    /// Lines in all batches.
    pub(crate) lines: u64,
    /// Uncompressed line-protocol bytes in all batches.
    pub(crate) raw_bytes: u64,
    /// Bytes on the wire (equal to `raw_bytes` without gzip).
    pub(crate) wire_bytes: u64,
    /// Whether the bodies are gzip-compressed.
    pub(crate) gzip: bool,
}

/// splitmix64: a fast, well-mixed hash of one integer.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Write a value given in hundredths as a decimal float (`1234` → `12.34`).
fn centi(out: &mut Vec<u8>, v: u64) {
    let _ = write!(out, "{}.{:02}", v / 100, v % 100);
}

fn tags(out: &mut Vec<u8>, measurement: &str, host: u32) {
    let region = REGIONS[host as usize % REGIONS.len()];
    let _ = write!(out, "{measurement},host=host-{host:03},region={region} ");
}

/// One `cpu` line: usage_user, usage_system, usage_idle (floats summing to 100).
pub(crate) fn cpu_line(out: &mut Vec<u8>, host: u32, ts: i64, seed: u64) {
    let r = mix(seed);
    let user = r % 7_000;
    let system = (r >> 20) % 2_000;
    let idle = 10_000 - user - system;
    tags(out, "cpu", host);
    out.extend_from_slice(b"usage_user=");
    centi(out, user);
    out.extend_from_slice(b",usage_system=");
    centi(out, system);
    out.extend_from_slice(b",usage_idle=");
    centi(out, idle);
    let _ = writeln!(out, " {ts}");
}

/// One `mem` line: used, free, cached (integer bytes of a 16 GiB machine).
fn mem_line(out: &mut Vec<u8>, host: u32, ts: i64, seed: u64) {
    const TOTAL: u64 = 16 << 30;
    let r = mix(seed);
    let used = 2_000_000_000 + r % 12_000_000_000;
    let cached = (r >> 24) % 2_000_000_000;
    let free = TOTAL - used - cached;
    tags(out, "mem", host);
    let _ = writeln!(out, "used={used}i,free={free}i,cached={cached}i {ts}");
}

/// One `disk` line: read_bytes, write_bytes (integers), util (float percent).
fn disk_line(out: &mut Vec<u8>, host: u32, ts: i64, seed: u64) {
    let r = mix(seed);
    let read = r % 50_000_000;
    let write = (r >> 16) % 80_000_000;
    let util = (r >> 44) % 10_000;
    tags(out, "disk", host);
    let _ = write!(out, "read_bytes={read}i,write_bytes={write}i,util=");
    centi(out, util);
    let _ = writeln!(out, " {ts}");
}

/// Build `count` batches in parallel on every core; `make(i)` builds batch `i`.
fn parallel_batches(count: usize, make: impl Fn(usize) -> Vec<u8> + Sync) -> Vec<Vec<u8>> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(count.max(1));
    let per_thread = count.div_ceil(threads.max(1));
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let make = &make;
                s.spawn(move || {
                    let lo = t * per_thread;
                    let hi = ((t + 1) * per_thread).min(count);
                    (lo..hi).map(make).collect::<Vec<_>>()
                })
            })
            .collect();
        handles.into_iter().flat_map(|h| h.join().expect("generator thread panicked")).collect()
    })
}

fn finish(raw: Vec<Vec<u8>>, lines: u64, gzip: bool) -> Payloads {
    let raw_bytes = raw.iter().map(|b| b.len() as u64).sum();
    let batches: Vec<Bytes> = if gzip {
        let compressed = parallel_batches(raw.len(), |i| {
            let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            enc.write_all(&raw[i]).expect("writing to memory");
            enc.finish().expect("writing to memory")
        });
        compressed.into_iter().map(Bytes::from).collect()
    } else {
        raw.into_iter().map(Bytes::from).collect()
    };
    let wire_bytes = batches.iter().map(|b| b.len() as u64).sum();
    Payloads { batches, lines, raw_bytes, wire_bytes, gzip }
}

/// Shape of the ingest data set.
#[derive(Debug, Clone, Copy)]
pub(crate) struct IngestShape {
    /// Total lines.
    pub(crate) lines: u64,
    /// Lines per request.
    pub(crate) batch_lines: u64,
    /// Number of hosts.
    pub(crate) hosts: u32,
    /// Timestamp of line 0 (ns).
    pub(crate) start_ns: i64,
    /// Timestamp increment from one line to the next (ns, > 0).
    pub(crate) step_ns: i64,
    /// Varies the values between data sets.
    pub(crate) seed: u64,
}

/// The ingest data set: for each tick, every host writes one `cpu`, `mem` and `disk`
/// line. Line `i` has timestamp `start_ns + i * step_ns`, so timestamps strictly increase
/// and every point is distinct.
pub(crate) fn ingest(shape: IngestShape, gzip: bool) -> Payloads {
    let IngestShape { lines, batch_lines, hosts, start_ns, step_ns, seed } = shape;
    let per_tick = u64::from(hosts) * MEASUREMENTS.len() as u64;
    let count = lines.div_ceil(batch_lines) as usize;
    let raw = parallel_batches(count, |b| {
        let lo = b as u64 * batch_lines;
        let hi = (lo + batch_lines).min(lines);
        let mut out = Vec::with_capacity(((hi - lo) * 120) as usize);
        for i in lo..hi {
            let within = i % per_tick;
            let host = (within / MEASUREMENTS.len() as u64) as u32;
            let ts = start_ns + i as i64 * step_ns;
            let h = seed ^ i.wrapping_mul(0x2545_f491_4f6c_dd1d);
            match within % MEASUREMENTS.len() as u64 {
                0 => cpu_line(&mut out, host, ts, h),
                1 => mem_line(&mut out, host, ts, h),
                _ => disk_line(&mut out, host, ts, h),
            }
        }
        out
    });
    finish(raw, lines, gzip)
}

/// One line per measurement, to create the database and its tables before timing.
pub(crate) fn warmup_lines(ts: i64) -> Vec<u8> {
    let mut out = Vec::new();
    cpu_line(&mut out, 0, ts, 1);
    mem_line(&mut out, 0, ts, 2);
    disk_line(&mut out, 0, ts, 3);
    out
}

/// Shape of the query data set.
#[derive(Debug, Clone, Copy)]
pub(crate) struct QueryShape {
    /// Number of hosts.
    pub(crate) hosts: u32,
    /// Newest timestamp (ns), aligned to `recent_interval_s`.
    pub(crate) newest_ns: i64,
    /// Interval of the recent data (s).
    pub(crate) recent_interval_s: i64,
    /// How far back the recent data goes (s).
    pub(crate) recent_span_s: i64,
    /// Interval of the older data (s).
    pub(crate) old_interval_s: i64,
    /// How far back the older data goes, beyond the recent data (s).
    pub(crate) old_span_s: i64,
    /// Lines per request.
    pub(crate) batch_lines: u64,
}

/// `cpu` for every host: every `recent_interval_s` over the last `recent_span_s`, then
/// every `old_interval_s` for `old_span_s` before that.
pub(crate) fn query_data(shape: QueryShape) -> Payloads {
    const S: i64 = 1_000_000_000;
    let mut times: Vec<i64> = (0..shape.recent_span_s / shape.recent_interval_s)
        .map(|k| shape.newest_ns - k * shape.recent_interval_s * S)
        .collect();
    let old_newest = shape.newest_ns - shape.recent_span_s * S;
    times.extend((0..shape.old_span_s / shape.old_interval_s).map(|k| old_newest - k * shape.old_interval_s * S));
    times.reverse();
    let hosts = u64::from(shape.hosts);
    let lines = times.len() as u64 * hosts;
    let count = lines.div_ceil(shape.batch_lines) as usize;
    let raw = parallel_batches(count, |b| {
        let lo = b as u64 * shape.batch_lines;
        let hi = (lo + shape.batch_lines).min(lines);
        let mut out = Vec::with_capacity(((hi - lo) * 100) as usize);
        for i in lo..hi {
            let ts = times[(i / hosts) as usize];
            cpu_line(&mut out, (i % hosts) as u32, ts, i ^ 0x5eed);
        }
        out
    });
    finish(raw, lines, false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(p: &Payloads) -> String {
        p.batches.iter().map(|b| std::str::from_utf8(b).unwrap()).collect()
    }

    #[test]
    fn ingest_lines_have_increasing_timestamps_and_all_fields() {
        let shape = IngestShape { lines: 1_005, batch_lines: 100, hosts: 100, start_ns: 1_000, step_ns: 7, seed: 42 };
        let p = ingest(shape, false);
        assert_eq!(p.batches.len(), 11);
        let all = text(&p);
        let lines: Vec<&str> = all.lines().collect();
        assert_eq!(lines.len(), 1_005);
        assert_eq!(p.raw_bytes as usize, all.len());
        let mut last = i64::MIN;
        for (i, l) in lines.iter().enumerate() {
            let ts: i64 = l.rsplit(' ').next().unwrap().parse().unwrap();
            assert!(ts > last);
            assert_eq!(ts, 1_000 + i as i64 * 7);
            last = ts;
        }
        assert!(lines[0].starts_with("cpu,host=host-000,region=us-east-1 usage_user="));
        assert!(lines[1].starts_with("mem,host=host-000,region=us-east-1 used="));
        assert!(lines[2].starts_with("disk,host=host-000,region=us-east-1 read_bytes="));
        assert!(lines[299].starts_with("disk,host=host-099,region="));
        assert!(lines[300].starts_with("cpu,host=host-000,"));
        assert!(lines[2].contains("i,write_bytes=") && lines[2].contains(",util="));
        // Same arguments, same bytes.
        assert_eq!(text(&ingest(shape, false)), all);
    }

    #[test]
    fn gzip_round_trips() {
        use std::io::Read as _;
        let shape = IngestShape { lines: 500, batch_lines: 200, hosts: 10, start_ns: 0, step_ns: 1, seed: 1 };
        let plain = ingest(shape, false);
        let gz = ingest(shape, true);
        assert!(gz.wire_bytes < gz.raw_bytes);
        for (p, g) in plain.batches.iter().zip(&gz.batches) {
            let mut out = Vec::new();
            flate2::read::GzDecoder::new(&g[..]).read_to_end(&mut out).unwrap();
            assert_eq!(&out[..], &p[..]);
        }
    }

    #[test]
    fn query_data_shape() {
        let s = 1_000_000_000;
        let p = query_data(QueryShape {
            hosts: 3,
            newest_ns: 100_000 * s,
            recent_interval_s: 10,
            recent_span_s: 60,
            old_interval_s: 30,
            old_span_s: 90,
            batch_lines: 4,
        });
        assert_eq!(p.lines, 3 * (6 + 3));
        let all = text(&p);
        let ts: Vec<i64> = all.lines().map(|l| l.rsplit(' ').next().unwrap().parse().unwrap()).collect();
        assert_eq!(ts.len(), 27);
        assert_eq!(*ts.last().unwrap(), 100_000 * s);
        assert_eq!(ts[0], (100_000 - 60 - 60) * s);
        assert!(ts.windows(2).all(|w| w[0] <= w[1]));
    }
}
