//! How the pieces fit together: brokers, routers, latches and streams.
//!
//! ```text
//!     user threads                       broker thread (one per Broker)
//!   ┌──────────────┐   defer(f) + wake  ┌──────────────────────────────────────────┐
//!   │ recv.get()   │ ─────────────────▶ │ mio Poll over every Side fd + one Waker  │
//!   │  sleeps on a │                    │   readable  → Stream::on_receive         │
//!   │  Latch (own  │ ◀── latch.put ──── │      decode frames → Router::async_route │
//!   │  socketpair) │                    │          local → handler(msg) → Latch    │
//!   │              │                    │          remote → Stream::send           │
//!   │ router.route │ ── direct write ─▶ │   writable  → Stream::on_transmit        │
//!   └──────────────┘   (queue empty)    └──────────────────────────────────────────┘
//! ```
//!
//! * **One broker thread** per [`Broker`](crate::Broker) owns the poller. It alone reads streams
//!   and runs the handlers registered with [`Router::add_handler`](crate::Router::add_handler).
//!   Other threads give it work with [`Broker::defer`](crate::Broker::defer), which queues a
//!   closure and wakes the thread through a single waker.
//! * **User threads block on [`Latch`](crate::Latch)es.** A waiting thread sleeps in `ppoll(2)`
//!   on its own socket pair, created the first time that thread sleeps and tied to a latch only
//!   for one wait. [`Latch::put`](crate::Latch::put) hands the object straight to the oldest
//!   sleeper and wakes exactly that one. [`Receiver`](crate::Receiver) and `Select` are built on
//!   latches, so every blocking call has a timeout flavour and wakes with an error when its
//!   channel dies.
//! * **Routing.** A message whose `dst_id` is the router's own context id goes to the handler of
//!   its `handle`; anything else is written to the stream registered for the destination (or for
//!   the parent). A user thread that routes a message writes it straight to the stream when
//!   nothing is queued there; otherwise the bytes are queued and the broker drains them.
//! * **Nobody sleeps forever.** A message that cannot be delivered (invalid handle, no route,
//!   refused by policy, too large) is answered with a *dead* message when it asked for a reply.
//!   When a stream disconnects, handlers expecting replies from contexts behind it receive dead
//!   messages; when the broker exits, every remaining handler does.
//! * **Wire format.** A frame is a 26-byte big-endian header (`magic`, `dst_id`, `src_id`,
//!   `auth_id`, `handle`, `reply_to`, `length`) and `length` bytes of data, MessagePack-encoded
//!   by [`Message::pickled`](crate::Message::pickled). A bad magic or an oversized frame
//!   disconnects that stream alone, with a logged error.
//!
//! # Children and trees
//!
//! ```text
//!   master (context 0)                 child (context 1)              grandchild (context 1000)
//!   Router::local() ── socketpair ──▶  same executable, argv[1] =     started *by the child*
//!     config frame  ───────────────▶   --mitogen-child: a loader      from its own executable
//!     ◀─────────────── Hello           constructor runs the child     (via=), ids from the
//!     ◀── ADD_ROUTE(1000) ──────────── main before `main`             master in blocks
//!     CALL_FUNCTION ───────────────▶   main thread: dispatch_calls    ◀── CALL_FUNCTION routed
//!     ◀─────────────── reply / CallError                                   through context 1
//! ```
//!
//! * A child is started over a socketpair (or `fork`ed), reads its
//!   [`ChildConfig`](crate::ChildConfig) from the first frame, starts its own broker and router,
//!   and answers with a [`Hello`](crate::Hello). Its stdout and stderr become log records of
//!   that context at the master; `log` records are forwarded too.
//! * Calls arrive on `CALL_FUNCTION`, are accepted only with a parent's authority, and run one at
//!   a time on the child's main thread ([`ExternalContext::dispatch_calls`](crate::ExternalContext::dispatch_calls)).
//!   A function is named on the wire by its path and found in a table built at link time by
//!   [`remote!`](crate::remote); bytes from the wire never become a code pointer.
//! * A child that creates children of its own gets context ids from the master in blocks
//!   (`ALLOCATE_ID`), announces each new route up the tree (`ADD_ROUTE`) before the new child's
//!   stream is read, and announces lost subtrees (`DEL_ROUTE`), so every caller waiting on a lost
//!   context wakes with a dead message.
//! * A child exits when its parent's stream closes; a parent reaps every child it started,
//!   escalating to `SIGTERM` and `SIGKILL` for one that does not exit.
