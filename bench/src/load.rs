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
    /// Open loop only: how late each successful request started after its
    /// scheduled time (the generator's share of its latency: the pacing
    /// thread and the runtime that runs the request).
    pub late: Vec<Duration>,
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
        quantile_ms(&self.latencies, p)
    }

    /// The `p` quantile of the open loop's start lateness, ms (`None` for
    /// a closed loop).
    pub fn late_quantile_ms(&self, p: f64) -> Option<f64> {
        (!self.late.is_empty()).then(|| quantile_ms(&self.late, p))
    }
}

fn quantile_ms(durations: &[Duration], p: f64) -> f64 {
    let mut l = durations.to_vec();
    l.sort();
    if l.is_empty() {
        return 0.0;
    }
    let i = ((l.len() as f64 - 1.0) * p).round() as usize;
    l[i.min(l.len() - 1)].as_secs_f64() * 1000.0
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
///
/// The schedule is kept by a thread of its own that sleeps with the
/// operating system's timer and starts every request that has come due when
/// it wakes. A `tokio::time::sleep_until` per request would not do: the
/// runtime's timer has a resolution of 1 ms, so every request would start up
/// to 1 ms late, in bursts on the millisecond, and that lateness (counted,
/// rightly, from the scheduled start) would be the generator's, not the
/// server's.
pub async fn open_loop<F, Fut>(count: usize, rate: f64, max_in_flight: usize, op: F) -> Sample
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
{
    /// The result, the latency and the start's lateness.
    type Outcome = (anyhow::Result<()>, Duration, Duration);
    let op = Arc::new(op);
    let permits = Arc::new(tokio::sync::Semaphore::new(max_in_flight.max(1)));
    let runtime = tokio::runtime::Handle::current();
    let start = Instant::now();
    let period = Duration::from_secs_f64(1.0 / rate.max(1.0));
    let pacer = std::thread::Builder::new()
        .name("open-loop-pacer".into())
        .spawn(move || {
            let mut tasks: Vec<tokio::task::JoinHandle<Outcome>> = Vec::with_capacity(count);
            let mut next = 0;
            while next < count {
                let now = Instant::now();
                let due = due_by(start, period, now, next, count);
                if due == next {
                    let until = due_at(start, period, next) - now;
                    std::thread::sleep(until.max(PACING_QUANTUM));
                    continue;
                }
                for i in next..due {
                    // Outside the runtime, so waiting for a permit blocks
                    // only this thread.
                    let Ok(permit) = runtime.block_on(permits.clone().acquire_owned()) else {
                        return tasks;
                    };
                    let (op, scheduled) = (op.clone(), due_at(start, period, i));
                    tasks.push(runtime.spawn(async move {
                        let late = scheduled.elapsed();
                        let r = op(i).await;
                        drop(permit);
                        (r, scheduled.elapsed(), late)
                    }));
                }
                next = due;
            }
            tasks
        });
    let mut all = Sample::default();
    let tasks = match pacer {
        Ok(pacer) => match tokio::task::spawn_blocking(move || pacer.join()).await {
            Ok(Ok(tasks)) => tasks,
            _ => {
                all.errors += 1;
                all.first_error = Some("the open loop's pacing thread failed".into());
                Vec::new()
            }
        },
        Err(e) => {
            all.errors += 1;
            all.first_error = Some(format!("no pacing thread: {e}"));
            Vec::new()
        }
    };
    for t in tasks {
        match t.await {
            Ok((Ok(()), d, late)) => {
                all.latencies.push(d);
                all.late.push(late);
            }
            Ok((Err(e), _, _)) => {
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

/// The open loop's pacing thread sleeps at least this long: each wake-up
/// starts every request that came due meanwhile, so at high rates a few start
/// together (at most this late, and counted so). It bounds the thread's
/// wake-ups to 10,000 a second; at the bench's rates (about 20,000 requests
/// a second) the generator's CPU per request measured the same with and
/// without it (BENCHMARKS.md).
const PACING_QUANTUM: Duration = Duration::from_micros(100);

/// When request `i` is due.
fn due_at(start: Instant, period: Duration, i: usize) -> Instant {
    start + period.mul_f64(i as f64)
}

/// The end (exclusive) of the requests due at `now`, from `next` on: request
/// `i` is due at `start + i × period`; never past `count`.
fn due_by(start: Instant, period: Duration, now: Instant, next: usize, count: usize) -> usize {
    let elapsed = now.saturating_duration_since(start).as_secs_f64();
    let period = period.as_secs_f64().max(1e-12);
    // Request i is due when i × period <= elapsed.
    let due = (elapsed / period).floor() as usize + 1;
    due.clamp(next, count)
}

fn merge(all: &mut Sample, s: Sample) {
    all.latencies.extend(s.latencies);
    all.errors += s.errors;
    if all.first_error.is_none() {
        all.first_error = s.first_error;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_come_due_on_their_schedule() {
        let start = Instant::now();
        let period = Duration::from_micros(100);
        // Request 0 is due at the start itself.
        assert_eq!(due_by(start, period, start, 0, 10), 1);
        // 250 µs in: requests 0, 1 and 2 (at 0, 100 and 200 µs).
        let now = start + Duration::from_micros(250);
        assert_eq!(due_by(start, period, now, 0, 10), 3);
        // Those already started are not started again.
        assert_eq!(due_by(start, period, now, 3, 10), 3);
        // Never past the last one.
        assert_eq!(
            due_by(start, period, start + Duration::from_secs(1), 4, 10),
            10
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_open_loop_runs_every_request_once() {
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let s = seen.clone();
        let sample = open_loop(50, 10_000.0, 4, move |i| {
            let s = s.clone();
            async move {
                s.lock().map_err(|_| anyhow::anyhow!("poisoned"))?.push(i);
                if i == 7 {
                    anyhow::bail!("seven");
                }
                Ok(())
            }
        })
        .await;
        let mut seen = seen.lock().unwrap().clone();
        seen.sort();
        assert_eq!(seen, (0..50).collect::<Vec<_>>());
        assert_eq!((sample.latencies.len(), sample.errors), (49, 1));
        assert_eq!(sample.first_error.as_deref(), Some("seven"));
        assert_eq!(sample.late.len(), 49);
        for (late, latency) in sample.late.iter().zip(&sample.latencies) {
            assert!(late <= latency, "{late:?} > {latency:?}");
        }
    }

    /// Lateness is the wait before a request starts, not its duration: with
    /// one request in flight at a time, each 20 ms long and due every
    /// millisecond, the first starts on time and the last about 180 ms late.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn requests_held_back_start_late() {
        let sample = open_loop(10, 1000.0, 1, |_| async {
            tokio::time::sleep(Duration::from_millis(20)).await;
            Ok(())
        })
        .await;
        let first = sample.late_quantile_ms(0.0).unwrap();
        let last = sample.late_quantile_ms(1.0).unwrap();
        assert!(first < 15.0, "first started {first} ms late");
        assert!(last >= 150.0, "last started {last} ms late");
        assert_eq!(Sample::default().late_quantile_ms(0.99), None);
    }
}
