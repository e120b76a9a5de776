//! "Who is behind this translated endpoint?" asked of a running agent: the agent's side
//! (`GET /nat/who?addr=…&port=…&format=text|json` on its metrics endpoint, answered by its
//! pipeline from the live bindings and the history of ended ones) and the asking side
//! (`tracer nat --who ADDR[:PORT] --agent HOST:PORT`).
use std::{
    io::{self, Write},
    sync::Arc,
    time::Duration,
};

use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use tokio::sync::{mpsc, oneshot};

use crate::{
    error::{Error, Result},
    metrics::server::{Answer, Ask},
    model::nat::who::Who,
    output::nat::{who_json, who_line, who_summary_json},
    pipeline::nat::{WhoAsk, WhoReply},
    text,
};

/// How long the agent's loop may take to answer (it answers between ring drains).
const ANSWER_WITHIN: Duration = Duration::from_secs(2);
/// How long the asking side waits for the whole answer, and how much of it it reads.
const ASK_WITHIN: Duration = Duration::from_secs(10);
const MAX_ANSWER_BYTES: usize = 4 << 20;

/// A question as the endpoint takes it: `addr=ADDR[&port=PORT][&format=text|json]`. Values
/// are never percent-encoded (an address and a port need no encoding).
#[derive(Debug, PartialEq, Eq)]
struct Question {
    who: Who,
    json: bool,
}

fn parse(query: &str) -> std::result::Result<Question, String> {
    let (mut addr, mut port, mut json) = (None, None, false);
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match key {
            "addr" => addr = Some(value),
            "port" => port = Some(value),
            "format" if value == "json" => json = true,
            "format" if value == "text" => json = false,
            _ => {
                return Err(format!(
                    "unknown parameter {}: ask with addr=ADDR[&port=PORT][&format=text|json]",
                    text::escape(key)
                ))
            }
        }
    }
    let addr = addr
        .ok_or("addr=ADDR is missing")?
        .trim_start_matches('[')
        .trim_end_matches(']');
    let endpoint = match port {
        Some(p) => {
            let p: u16 = p
                .parse()
                .map_err(|_| format!("port={}: not a port", text::escape(p)))?;
            match addr.contains(':') {
                true => format!("[{addr}]:{p}"),
                false => format!("{addr}:{p}"),
            }
        }
        None => addr.to_string(),
    };
    Ok(Question {
        who: endpoint.parse()?,
        json,
    })
}

/// The query string that asks about `who`.
fn query(who: &Who, json: bool) -> String {
    let format = if json { "json" } else { "text" };
    match who.port {
        Some(p) => format!("addr={}&port={p}&format={format}", who.addr),
        None => format!("addr={}&format={format}", who.addr),
    }
}

/// The agent's side: each question goes to the pipeline on `tx` (its loop answers between
/// ring drains) and comes back rendered as text lines or JSON records.
pub fn asker(tx: mpsc::UnboundedSender<WhoAsk>) -> Ask {
    // One question on its way to the loop at a time (its permit travels with it).
    let turn = Arc::new(tokio::sync::Semaphore::new(1));
    Arc::new(move |query: String| {
        let (tx, turn) = (tx.clone(), turn.clone());
        Box::pin(async move { answer(&query, &tx, turn).await })
    })
}

async fn answer(
    query: &str,
    tx: &mpsc::UnboundedSender<WhoAsk>,
    turn: Arc<tokio::sync::Semaphore>,
) -> Answer {
    let plain = "text/plain; charset=utf-8";
    let busy = || {
        let why = "the agent is answering another question: ask again\n";
        (503, plain, why.to_string())
    };
    let question = match parse(query) {
        Ok(q) => q,
        Err(e) => return (400, plain, format!("{e}\n")),
    };
    let Ok(turn) = turn.try_acquire_owned() else {
        return busy();
    };
    let (reply, answered) = oneshot::channel();
    let asked = WhoAsk {
        who: question.who,
        reply,
        turn: Some(turn),
    };
    if tx.send(asked).is_err() {
        return (503, plain, "the agent is stopping\n".into());
    }
    let (found, kept, now) = match tokio::time::timeout(ANSWER_WITHIN, answered).await {
        Ok(Ok(WhoReply::Answers {
            answers,
            kept,
            now_wall_ns,
        })) => (answers, kept, now_wall_ns),
        Ok(Ok(WhoReply::Busy)) => return busy(),
        Ok(Ok(WhoReply::NoNat)) => {
            let why =
                "this agent watches no NAT: start it with --nat, --nat-netns or --nat-all-netns\n";
            return (404, plain, why.into());
        }
        Ok(Err(_)) => return (503, plain, "the agent is stopping\n".into()),
        Err(_) => return (503, plain, "the agent did not answer in time\n".into()),
    };
    let asked = question.who.to_string();
    let mut body = String::new();
    if question.json {
        for a in &found.answers {
            body.push_str(&who_json(a, &asked));
            body.push('\n');
        }
        body.push_str(&who_summary_json(&found, &asked, kept));
        body.push('\n');
        return (200, "application/x-ndjson", body);
    }
    if found.answers.is_empty() {
        body = format!(
            "no binding for {asked} now or in the last {} s\n",
            kept.as_secs()
        );
    }
    for a in &found.answers {
        body.push_str(&who_line(a, now));
        body.push('\n');
    }
    if found.truncated {
        body.push_str("note: more bindings matched; the newest are shown\n");
    }
    if found.evicted > 0 {
        body.push_str(&format!(
            "note: tracer's tables pushed out {} bindings since it started \
             (tracer_evicted_total): one may be missing here\n",
            found.evicted
        ));
    }
    (200, plain, body)
}

/// The asking side: one GET to the agent, its answer on stdout (each line escaped: the agent
/// is whatever listens at that address). None found is exit status 1, like grep.
pub async fn ask_agent(agent: &str, who: &Who, json: bool) -> Result<bool> {
    let failed = |what: &str, e: &dyn std::fmt::Display| {
        Error::Invalid(format!("asking the agent at {agent}: {what}: {e}"))
    };
    let exchange = || async {
        // A name is resolved here (`localhost:9464`).
        let stream = tokio::net::TcpStream::connect(agent)
            .await
            .map_err(|e| failed("connect", &e))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| failed("HTTP", &e))?;
        tokio::spawn(conn);
        let request = hyper::Request::get(format!("/nat/who?{}", query(who, json)))
            .header("host", agent)
            .body(Empty::<Bytes>::new())
            .map_err(|e| failed("request", &e))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| failed("HTTP", &e))?;
        let status = response.status();
        let body = Limited::new(response.into_body(), MAX_ANSWER_BYTES)
            .collect()
            .await
            .map_err(|e| failed("reading the answer", &e))?
            .to_bytes();
        Ok::<_, Error>((status, body))
    };
    // The agent takes one question at a time (503 while busy): asked again, a little later
    // each time, with jitter so that askers spread out, until the deadline.
    let asking = async {
        let mut pause = Duration::from_millis(50);
        loop {
            let (status, body) = exchange().await?;
            if status != hyper::StatusCode::SERVICE_UNAVAILABLE
                || !body.starts_with(b"the agent is answering another question")
            {
                return Ok::<_, Error>((status, body));
            }
            let jitter = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos() % 50_000_000);
            tokio::time::sleep(pause + Duration::from_nanos(u64::from(jitter))).await;
            pause = (pause * 2).min(Duration::from_millis(800));
        }
    };
    let (status, body) = tokio::time::timeout(ASK_WITHIN, asking)
        .await
        .map_err(|_| failed("no answer", &format!("within {} s", ASK_WITHIN.as_secs())))??;
    let body = String::from_utf8_lossy(&body);
    if !status.is_success() {
        return Err(Error::Invalid(format!(
            "the agent at {agent} answered {}: {}",
            status.as_u16(),
            text::escape(body.trim_end())
        )));
    }
    let mut out = io::stdout().lock();
    let mut found = false;
    for line in body.lines() {
        // A JSON record is one per answer; the text answer says so when there is none.
        found |= match json {
            true => line.starts_with("{\"type\":\"nat_who\","),
            false => line.starts_with("live") || line.starts_with("ended "),
        };
        writeln!(out, "{}", text::escape(line)).map_err(|e| Error::io("writing output", e))?;
    }
    out.flush().map_err(|e| Error::io("writing output", e))?;
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn questions_round_trip_and_bad_ones_say_why() {
        for (who, json) in [
            ("203.0.113.1:61000", false),
            ("203.0.113.1", true),
            ("[2001:db8::1]:443", false),
        ] {
            let who: Who = who.parse().unwrap();
            assert_eq!(parse(&query(&who, json)), Ok(Question { who, json }));
        }
        assert!(parse("").unwrap_err().contains("addr"));
        assert!(parse("addr=1.2.3.4&port=x")
            .unwrap_err()
            .contains("not a port"));
        assert!(parse("addr=1.2.3.4&evil=\u{1b}")
            .unwrap_err()
            .contains("unknown"));
        assert!(!parse("addr=1.2.3.4&\u{1b}[2J=1")
            .unwrap_err()
            .contains('\u{1b}'));
        assert!(parse("addr=%31.2.3.4").is_err());
        assert_eq!(
            parse("addr=[2001:db8::1]&port=80").unwrap().who,
            "[2001:db8::1]:80".parse().unwrap()
        );
    }
}
