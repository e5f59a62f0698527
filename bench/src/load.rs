//! Load generation: a closed loop (N workers, each sending its next request
//! when the last one is answered: peak throughput) and an open loop (requests
//! started on a fixed schedule: latency at a chosen rate, measured from the
//! scheduled start so a stall is not hidden by the loop waiting for it).

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What one load run observed.
#[derive(Debug, Clone, Default)]
pub struct Sample {
    pub latencies: Vec<Duration>,
    pub errors: usize,
    pub first_error: Option<String>,
    pub elapsed: Duration,
}

impl Sample {
    /// Answered requests (errors included).
    pub fn count(&self) -> usize {
        self.latencies.len() + self.errors
    }

    /// Successful requests per second.
    pub fn rps(&self) -> f64 {
        self.latencies.len() as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// The `p` quantile (0..=1) of the successful requests' latency, ms.
    pub fn quantile_ms(&self, p: f64) -> f64 {
        let mut l = self.latencies.clone();
        l.sort();
        if l.is_empty() {
            return 0.0;
        }
        let i = ((l.len() as f64 - 1.0) * p).round() as usize;
        l[i.min(l.len() - 1)].as_secs_f64() * 1000.0
    }
}

/// Runs `op(i)` for i in 0..count over `concurrency` workers; worker `w`
/// runs exactly the i with `i % concurrency == w`, in order.
pub async fn closed_loop<F, Fut>(count: usize, concurrency: usize, op: F) -> Sample
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = anyhow::Result<()>> + Send,
{
    let op = Arc::new(op);
    let start = Instant::now();
    let mut workers = Vec::new();
    for w in 0..concurrency.max(1) {
        let op = op.clone();
        workers.push(tokio::spawn(async move {
            let mut s = Sample::default();
            let mut i = w;
            while i < count {
                let t = Instant::now();
                match op(i).await {
                    Ok(()) => s.latencies.push(t.elapsed()),
                    Err(e) => {
                        s.errors += 1;
                        s.first_error.get_or_insert_with(|| format!("{e:#}"));
                    }
                }
                i += concurrency.max(1);
            }
            s
        }));
    }
    let mut all = Sample::default();
    for w in workers {
        match w.await {
            Ok(s) => merge(&mut all, s),
            Err(e) => {
                all.errors += 1;
                all.first_error.get_or_insert_with(|| e.to_string());
            }
        }
    }
    all.elapsed = start.elapsed();
    all
}

/// Starts `op(i)` for i in 0..count at `rate` per second (at most
/// `max_in_flight` at once); latency counts from each request's scheduled
/// start.
pub async fn open_loop<F, Fut>(count: usize, rate: f64, max_in_flight: usize, op: F) -> Sample
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let op = Arc::new(op);
    let permits = Arc::new(tokio::sync::Semaphore::new(max_in_flight.max(1)));
    let start = Instant::now();
    let period = Duration::from_secs_f64(1.0 / rate.max(1.0));
    let mut tasks = Vec::with_capacity(count);
    for i in 0..count {
        let due = start + period.mul_f64(i as f64);
        tokio::time::sleep_until(due.into()).await;
        let Ok(permit) = permits.clone().acquire_owned().await else {
            break;
        };
        let op = op.clone();
        tasks.push(tokio::spawn(async move {
            let r = op(i).await;
            drop(permit);
            (r, due.elapsed())
        }));
    }
    let mut all = Sample::default();
    for t in tasks {
        match t.await {
            Ok((Ok(()), d)) => all.latencies.push(d),
            Ok((Err(e), _)) => {
                all.errors += 1;
                all.first_error.get_or_insert_with(|| format!("{e:#}"));
            }
            Err(e) => {
                all.errors += 1;
                all.first_error.get_or_insert_with(|| e.to_string());
            }
        }
    }
    all.elapsed = start.elapsed();
    all
}

fn merge(all: &mut Sample, s: Sample) {
    all.latencies.extend(s.latencies);
    all.errors += s.errors;
    if all.first_error.is_none() {
        all.first_error = s.first_error;
    }
}
