//! The load generator's connections: each one's life from connect to the end of the run,
//! and the scenarios it plays (paced, bursts, unlock storms, reconnect storms, churn).

use super::*;

fn token(opts: &Options, user: &str) -> String {
    accolade::auth::mint_with_secret(&opts.secret, &opts.tenant, user, accolade::auth::now_secs() + 24 * 3600)
}

/// Reconnect storm: counts its connection as away once, when it drops its socket or, failing
/// that, when the connection's task ends, so an early failure cannot hold the others back.
struct Away<'a> {
    sh: &'a Shared,
    done: bool,
}

impl Away<'_> {
    fn leave(&mut self) {
        if !self.done {
            self.done = true;
            self.sh.away.send_modify(|a| *a += 1);
        }
    }
}

impl Drop for Away<'_> {
    fn drop(&mut self) {
        self.leave();
    }
}

/// One connection's whole life in the scenario. Returns its tally, the time it took to resume
/// (reconnect storm) and how many distinct users it played.
pub(super) async fn connection(
    i: usize,
    opts: Arc<Options>,
    addr: SocketAddr,
    sh: Arc<Shared>,
    sem: Arc<tokio::sync::Semaphore>,
    connected: Arc<tokio::sync::Barrier>,
) -> anyhow::Result<(Tally, Option<u64>, u64)> {
    let mut t = Tally::new();
    let mut away = Away { sh: &sh, done: opts.scenario != Scenario::ReconnectStorm };
    let src = opts.sources[i % opts.sources.len()];
    let user = format!("{}-u{i}", opts.run_id);
    let mut p = Player::new(user.clone(), (i as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let started = Instant::now();
    let ws = {
        let _permit = sem.acquire().await?;
        let slow_one = opts.scenario == Scenario::SlowConsumers && i % 100 == 99;
        match open_with(&opts, addr, src, slow_one).await {
            Ok(mut ws) => match hello(&mut ws, &token(&opts, &user), None).await {
                Ok((epoch, off, _)) => {
                    p.epoch = epoch;
                    p.offset = off;
                    t.connect.record(started.elapsed().as_micros().max(1) as u64);
                    Some(ws)
                }
                Err(e) => {
                    sh.error(&format!("hello: {}", e.to_string().chars().take(40).collect::<String>()));
                    None
                }
            },
            Err(e) => {
                sh.error(&format!("connect: {}", e.to_string().chars().take(40).collect::<String>()));
                None
            }
        }
    };
    let _ = tokio::time::timeout(CONNECT_PHASE, connected.wait()).await;
    let Some(mut ws) = ws else {
        t.flush(&sh);
        return Ok((t, None, 0));
    };
    let result = match opts.scenario {
        Scenario::Steady | Scenario::SlowConsumers => paced(i, &opts, &sh, &mut ws, &mut p, &mut t).await.map(|_| (None, 1)),
        Scenario::Spike => burst(&opts, &sh, &mut ws, &mut p, &mut t, false).await.map(|_| (None, 1)),
        Scenario::UnlockStorm => unlock_storm(i, &opts, addr, src, &sh, ws, &mut t).await.map(|u| (None, u)),
        Scenario::ReconnectStorm => reconnect_storm(&opts, addr, src, &sh, ws, &mut p, &mut t, &mut away).await.map(|r| (r, 1)),
        Scenario::Churn => churn(i, &opts, addr, src, &sh, ws, &mut t).await.map(|u| (None, u)),
    };
    t.flush(&sh);
    let (resumed, users) = result?;
    Ok((t, resumed, users))
}

/// Open loop at this connection's share of the target rate until the run stops.
async fn paced(i: usize, opts: &Options, sh: &Shared, ws: &mut Ws, p: &mut Player, t: &mut Tally) -> anyhow::Result<()> {
    let slow_one = opts.scenario == Scenario::SlowConsumers && i % 100 == 99;
    // A slow consumer with its own rate keeps it for the whole run, so that the two phases
    // carry the same load and differ only in its reading.
    let per_conn = match opts.slow_rate {
        Some(r) if slow_one && r > 0.0 => r,
        _ if opts.rate > 0.0 => opts.rate / opts.connections as f64,
        _ => 0.0,
    };
    let period = if per_conn > 0.0 { Duration::from_secs_f64(1.0 / per_conn) } else { Duration::from_micros(200) };
    // Start each connection at a different point of its period so sends spread evenly.
    let offset = period.mul_f64((i as f64 * 0.618_034) % 1.0);
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + offset, period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    loop {
        if sh.stop.load(Ordering::Acquire) {
            break;
        }
        let slow_phase = sh.slow_phase.load(Ordering::Acquire);
        if slow_one && slow_phase {
            // A consumer that stops reading and goes on sending: its pushes pile up at the
            // server, which must close it (4000) once its outbox is full, without slowing
            // anyone else down. Its sends fail once the server has closed the socket.
            if opts.slow_rate != Some(0.0) {
                ticker.tick().await;
            }
            if sh.stop.load(Ordering::Acquire) {
                break;
            }
            let (ty, payload) = p.realistic(opts.correct_rate);
            let (_, text) = p.frame(ty, &payload);
            match tokio::time::timeout(Duration::from_millis(200), ws.send(Message::text(text))).await {
                Ok(Err(_)) => {
                    sh.slow_closed.fetch_add(1, Ordering::Relaxed);
                    return Ok(());
                }
                Ok(Ok(())) => t.sent += 1,
                Err(_) => {} // the socket is full; look at the stop flag and try again
            }
            continue;
        }
        tokio::select! {
            _ = ticker.tick() => {
                let (ty, payload) = p.realistic(opts.correct_rate);
                let (id, text) = p.frame(ty, &payload);
                p.sent.insert(id, Instant::now());
                ws.send(Message::text(text)).await?;
                t.sent += 1;
                t.sec_sent += 1;
                t.tick(sh);
            }
            m = ws.next() => match m {
                Some(Ok(Message::Text(txt))) => {
                    on_message(p, t, sh, &txt, (!slow_one).then_some(slow_phase));
                    t.tick(sh);
                }
                Some(Ok(Message::Close(f))) => {
                    sh.error(&format!("closed {}", f.map(|f| u16::from(f.code)).unwrap_or(0)));
                    return Ok(());
                }
                Some(Ok(_)) => {}
                None | Some(Err(_)) => {
                    sh.error("connection lost");
                    return Ok(());
                }
            }
        }
    }
    // Collect the answers to what was sent, so acked == sent on a healthy server.
    let deadline = Instant::now() + Duration::from_secs(10);
    while t.acked < t.sent && Instant::now() < deadline {
        if !drain(ws, p, t, sh, Duration::from_millis(200)).await {
            break;
        }
    }
    Ok(())
}

/// Sends `burst` events at once, then collects their answers.
async fn burst(opts: &Options, sh: &Shared, ws: &mut Ws, p: &mut Player, t: &mut Tally, unlocking: bool) -> anyhow::Result<()> {
    for _ in 0..opts.burst {
        let (ty, payload) = if unlocking { p.unlocking() } else { p.realistic(opts.correct_rate) };
        let (id, text) = p.frame(ty, &payload);
        p.sent.insert(id, Instant::now());
        ws.feed(Message::text(text)).await?;
        t.sent += 1;
        t.sec_sent += 1;
    }
    ws.flush().await?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while t.acked < t.sent && Instant::now() < deadline {
        if !drain(ws, p, t, sh, Duration::from_millis(500)).await {
            sh.error("connection lost");
            break;
        }
        t.tick(sh);
    }
    // Pushes follow the ack of the last event; give them a moment.
    drain(ws, p, t, sh, Duration::from_millis(100)).await;
    Ok(())
}

/// Fresh users, one after another on this connection, each sending the unlocking events.
async fn unlock_storm(i: usize, opts: &Options, addr: SocketAddr, src: IpAddr, sh: &Shared, mut ws: Ws, t: &mut Tally) -> anyhow::Result<u64> {
    let mut round = 0u64;
    let mut o = opts.clone();
    o.burst = 4;
    loop {
        let user = format!("{}-storm{i}-{round}", opts.run_id);
        if round > 0 {
            ws = open(opts, addr, src).await?;
            hello(&mut ws, &token(opts, &user), None).await?;
        } else {
            // The first connection was opened as another user; switch to a fresh one.
            ws.close(None).await.ok();
            ws = open(opts, addr, src).await?;
            hello(&mut ws, &token(opts, &user), None).await?;
        }
        let mut p = Player::new(user, round + 1);
        burst(&o, sh, &mut ws, &mut p, t, true).await?;
        ws.close(None).await.ok();
        round += 1;
        if sh.stop.load(Ordering::Acquire) {
            return Ok(round);
        }
    }
}

/// Sends a burst and drops the connection without reading its pushes; then everyone
/// reconnects with `since` at once and must receive every push it missed. Returns the time it
/// took to resume, or `None` when the replay stopped short.
#[allow(clippy::too_many_arguments)]
async fn reconnect_storm(opts: &Options, addr: SocketAddr, src: IpAddr, sh: &Shared, mut ws: Ws, p: &mut Player, t: &mut Tally, away: &mut Away<'_>) -> anyhow::Result<Option<u64>> {
    burst(opts, sh, &mut ws, p, t, false).await?;
    // The second burst is sent and the socket dropped at once: its pushes are missed.
    for _ in 0..opts.burst {
        let (ty, payload) = p.realistic(opts.correct_rate);
        let (_, text) = p.frame(ty, &payload);
        ws.feed(Message::text(text)).await?;
        t.sent += 1;
    }
    ws.flush().await?;
    drop(ws);
    away.leave();
    // Wait for everyone to drop, then reconnect together: that is the storm. The server may
    // still be working through the bursts sent just before the drops; a client has resumed
    // when it holds every push up to its welcome, so that work counts in the resume time.
    if !sh.until_all_away(opts.connections, CONNECT_PHASE).await {
        sh.error("storm: not every client dropped in time");
    }
    let started = Instant::now();
    let mut ws = open(opts, addr, src).await?;
    let (_, welcome_offset, recovered) = hello(&mut ws, &token(opts, &p.user), Some((&p.epoch.clone(), p.offset))).await?;
    if !recovered {
        t.not_recovered += 1;
    }
    // Everything up to the welcome's offset is replayed right behind the welcome.
    while p.offset < welcome_offset {
        match tokio::time::timeout(Duration::from_secs(30), ws.next()).await {
            Ok(Some(Ok(Message::Text(txt)))) => on_message(p, t, sh, &txt, Some(false)),
            Ok(Some(Ok(_))) => {}
            _ => {
                sh.error("replay incomplete");
                return Ok(None);
            }
        }
    }
    let resumed = started.elapsed().as_millis() as u64;
    // Events of the dropped burst that were still in flight push live now; read them too.
    drain(&mut ws, p, t, sh, Duration::from_millis(300)).await;
    Ok(Some(resumed))
}

/// Many users pass through: each visit connects as a user, sends a few events, leaves. The
/// second pass revisits the same users after the server passivated them.
async fn churn(i: usize, opts: &Options, addr: SocketAddr, src: IpAddr, sh: &Shared, first: Ws, t: &mut Tally) -> anyhow::Result<u64> {
    drop(first);
    let users_total = if opts.users > 0 { opts.users } else { opts.connections * 10 };
    let mine: Vec<usize> = (i..users_total).step_by(opts.connections).collect();
    let mut visited = 0u64;
    let half = opts.duration / 2;
    let start = Instant::now();
    for pass in 0..2 {
        if pass == 1 {
            // Leave time for passivation before coming back (or until the run stops).
            tokio::select! {
                _ = tokio::time::sleep_until((start + half).into()) => {}
                _ = sh.until_stopped() => {}
            }
        }
        let mut revisited = 0;
        for &u in &mine {
            // The second pass always brings back at least one user, however late it starts.
            if sh.stop.load(Ordering::Acquire) && pass == 1 && revisited > 0 {
                break;
            }
            revisited += pass;
            let user = format!("{}-churn{u}", opts.run_id);
            let mut ws = open(opts, addr, src).await?;
            hello(&mut ws, &token(opts, &user), None).await?;
            let mut p = Player::new(user, u as u64 + 7 + pass * 1000);
            p.n = pass * 100; // distinct event ids on the second pass
            let mut o = opts.clone();
            o.burst = 3;
            p.track = Some(format!("{}-{}", p.user, p.n + 1));
            burst(&o, sh, &mut ws, &mut p, t, false).await?;
            // The first ack of the visit is the one that paid for loading (or creating) the user.
            if let Some(us) = p.tracked_us {
                if pass == 0 { t.fresh.record(us) } else { t.revived.record(us) }
            }
            ws.close(None).await.ok();
            if pass == 0 {
                visited += 1;
            }
        }
    }
    Ok(visited)
}
