use tcptrace::probe::{Probe, ProbeOptions};

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let mut o = ProbeOptions::default(); if std::env::var("HOOK").is_ok() { o.force_path = Some(tcptrace::probe::HookPath::Tracepoint); } let (probe, mut reader) = Probe::load(&o)?;
    eprintln!("attached via {}", probe.path());
    let mut buf = Vec::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
    while std::time::Instant::now() < deadline {
        reader.next_batch(&mut buf).await;
        for e in buf.drain(..) {
            println!("{:?} {} {} -> {} pid={} comm={} ctx={} netns={}", e.what, e.sock.cookie, e.local, e.remote, e.task.pid, e.task.comm, e.owner_context, e.netns);
        }
    }
    eprintln!("{:?}", probe.loss(&reader));
    Ok(())
}
