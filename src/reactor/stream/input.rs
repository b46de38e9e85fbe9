//! A stream connection's input: newly read bytes, or the partial request held in its
//! `frame::Leftover`, handed to the authentication gate and then the service, whose replies
//! go straight to the socket when nothing is pending. The held partial request is bounded by
//! `--max-input`.

use super::{CloseReason, TurnIo, stop_input};
use crate::config::Limits;
use crate::net::write_until_blocked;
use crate::reactor::conn::Conn;
use crate::service::auth::AuthStep;
use crate::service::{Event, Step};

/// Hands newly read bytes (or, with `data` empty, the held leftover) to the authentication
/// gate and then the service. When nothing is pending, the service writes into the shared reply
/// buffer and the socket gets it straight away; only what the socket does not take is copied
/// into the connection. Returns the bytes written.
pub(super) fn absorb(
    c: &mut Conn,
    data: &[u8],
    io: &mut TurnIo<'_>,
    limits: &Limits,
) -> Result<usize, CloseReason> {
    let mut data = data;
    if let Some(gate) = &mut c.gate {
        match gate.on_input(data) {
            AuthStep::NeedMore => return Ok(0),
            AuthStep::Passed { consumed } => {
                c.gate = None;
                // The authentication response was the request under way.
                c.request_since = None;
                c.served = c.service.served_on_open();
                let opened = Event::Opened {
                    id: c.id,
                    authenticated: true,
                };
                c.service.on_event(opened, c.out.tail(), &mut io.svc.ctx());
                data = data.get(consumed..).unwrap_or_default();
                if data.is_empty() {
                    return Ok(0);
                }
            }
            AuthStep::Failed => {
                c.gate = None;
                let counters = io.svc.counters.service(c.kind);
                counters.rejected_auth = counters.rejected_auth.saturating_add(1);
                c.service
                    .on_event(Event::AuthFailed, c.out.tail(), &mut io.svc.ctx());
                stop_input(c);
                return Ok(0);
            }
        }
    }
    let mut sent = 0;
    let step = if c.input.is_empty() {
        let step = if c.out.is_empty() {
            io.reply.clear();
            let mut ctx = io.svc.ctx();
            let step = c.service.on_input(data, io.reply, &mut ctx);
            sent = write_until_blocked(&mut c.transport, io.reply).map_err(CloseReason::Io)?;
            c.out.extend(io.reply.get(sent..).unwrap_or_default());
            step
        } else {
            c.service.on_input(data, c.out.tail(), &mut io.svc.ctx())
        };
        c.input
            .append(data.get(step.consumed..).unwrap_or_default());
        step
    } else {
        c.input.append(data);
        let step = if c.service.accepts_input() {
            c.service
                .on_input(c.input.as_slice(), c.out.tail(), &mut io.svc.ctx())
        } else {
            Step::default()
        };
        c.input.consume(step.consumed);
        c.input.release();
        step
    };
    if step.consumed > 0 && !c.service.mid_request(0) {
        // A request ended here (or body bytes flow): a new one starts its own clock.
        c.request_since = None;
        c.served = true;
    }
    if step.close {
        stop_input(c);
    }
    if c.input.len() > limits.max_input {
        return Err(CloseReason::InputTooLarge {
            held: c.input.len(),
        });
    }
    Ok(sent)
}
