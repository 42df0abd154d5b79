//! Throughput of the data path: rendering Shapes World clips and writing and
//! reading them. `cargo bench --bench io`.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use minisora::data::shapes_world::{render, Canvas, Scene};
use minisora::video::{self, ReadOptions, WriteOptions};

const PROMPT: &str = "a red circle moving right and a small blue square moving up";

fn bench_render(c: &mut Criterion) {
    let scene = Scene::parse(PROMPT).unwrap();
    let mut group = c.benchmark_group("render");
    for (t, h, w) in [(16, 32, 32), (16, 64, 64), (32, 128, 128)] {
        let canvas = Canvas::new(t, h, w).unwrap();
        group.throughput(Throughput::Elements(t as u64));
        group.bench_function(format!("{t}x{h}x{w}"), |b| {
            b.iter(|| render(&scene, canvas, 1).unwrap())
        });
    }
    group.finish();
}

fn bench_io(c: &mut Criterion) {
    let scene = Scene::parse(PROMPT).unwrap();
    let frames = render(&scene, Canvas::new(16, 64, 64).unwrap(), 1)
        .unwrap()
        .frames;
    let dir = tempfile::tempdir().unwrap();
    let mut group = c.benchmark_group("video_16x64x64");
    group.throughput(Throughput::Elements(16));
    group.sample_size(20);
    for name in ["clip.mp4", "clip.gif", "sheet.png", "frames/"] {
        let path = dir.path().join(name);
        group.bench_function(format!("write {name}"), |b| {
            b.iter(|| video::write(&path, &frames.view(), &WriteOptions::default()).unwrap())
        });
    }
    for name in ["clip.mp4", "clip.gif", "frames/"] {
        let path = dir.path().join(name);
        group.bench_function(format!("read {name}"), |b| {
            b.iter(|| video::read(&path, &ReadOptions::default()).unwrap())
        });
    }
    group.finish();
}

criterion_group!(benches, bench_render, bench_io);
criterion_main!(benches);
