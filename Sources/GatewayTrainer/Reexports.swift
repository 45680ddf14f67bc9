// The trainer's export, training sequences, filters and rewards live in EpisodeLog (the gateway's
// console runs the same export and must not import the trainer); users of the trainer keep
// seeing them through this module.
@_exported import EpisodeLog
