//! The hash every byte of a `put` pays on the server: socklab's MD5 (`crates/md5`) against the
//! `md-5` crate (its `asm` feature on, its fastest build) on the same bytes, fed as the
//! server's hashing thread feeds it (64 KiB pieces) and in one 1 MiB piece. GNU `md5sum` of a
//! cached file, the target's anchor, is measured beside `put` by `tools/files-bench.sh`.
//!
//! Run: `cargo bench --bench md5 -- --warm-up-time 1 --measurement-time 3`.

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use md5::Digest;

fn bench_md5(c: &mut Criterion) {
    let data: Vec<u8> = (0..1u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let mut group = c.benchmark_group("md5_1MiB");
    group.throughput(Throughput::Bytes(data.len() as u64));
    for piece in [64 * 1024, 1 << 20] {
        group.bench_with_input(BenchmarkId::new("socklab", piece), &piece, |b, &piece| {
            b.iter(|| {
                let mut h = socklab_md5::Md5::new();
                in_pieces(&data, piece, |p| h.update(p));
                h.finalize()
            })
        });
        group.bench_with_input(BenchmarkId::new("md-5 asm", piece), &piece, |b, &piece| {
            b.iter(|| {
                let mut h = md5::Md5::new();
                in_pieces(&data, piece, |p| h.update(p));
                h.finalize()
            })
        });
    }
    group.finish();
}

/// Feeds `data` to `update` in pieces of `piece` bytes, opaque to the optimiser.
fn in_pieces(data: &[u8], piece: usize, mut update: impl FnMut(&[u8])) {
    for p in data.chunks(piece) {
        update(black_box(p));
    }
}

criterion_group!(benches, bench_md5);
criterion_main!(benches);
