// TrafficLog: the gateway's SQLite traffic log (GRDB).
//
// Pieces:
//   - `TrafficDatabase`: opens/migrates the file (0600, WAL, synchronous=NORMAL,
//     foreign keys), inserts and queries episodes / turns / feedback / policy versions.
//   - `LogWriter`: the request path's entry point. `append` queues (backpressure,
//     never drops), `run()` commits batches (group commit), `appendAndWait` /
//     `flush` wait for durability, `shutdown()` drains.
//   - `RetentionService`: periodic deletion of old episodes (cascades).
//   - `UUIDv7`: time-ordered episode ids.
//
// Typical server wiring:
//
//     let db = try TrafficDatabase(path: config.trafficLogPath)
//     let writer = LogWriter(database: db, logger: logger)
//     let retention = RetentionService(database: db, maxAge: 30 * 86_400, interval: 3_600, logger: logger)
//     // in a task group / ServiceLifecycle service:
//     //   await writer.run()        (cancellation == shutdown: drains, then returns)
//     //   await retention.run()     (until cancelled)
//     // per request, after the response is finished:
//     //   try await writer.append(episode)
//     // on graceful shutdown:
//     //   await writer.shutdown(); try db.checkpoint()
//
// Nothing in this module logs request or response bodies: log lines carry
// episode ids, counts and database error texts only (statement arguments are
// kept out of GRDB error messages).
