// Which logged episodes training uses (and `gateway-train export` writes): collaboration episodes
// with a reward source inside these filters. Shared by the trainer and the gateway's console.

import Foundation
import TrafficLog

public struct EpisodeFilter: Sendable, Equatable, Codable {
    public var since: Date?
    public var until: Date?
    public var route: String?
    public var policyVersion: String?
    public var limit: Int?

    public init(since: Date? = nil, until: Date? = nil, route: String? = nil, policyVersion: String? = nil, limit: Int? = nil) {
        self.since = since
        self.until = until
        self.route = route
        self.policyVersion = policyVersion
        self.limit = limit
    }

    public var query: EpisodeQuery {
        EpisodeQuery(
            since: since, until: until, route: route, mode: "collaborate", policyVersion: policyVersion,
            hasRewardSource: true, limit: limit)
    }
}
