"""What a cluster node knows of the whole cluster, for ``/metrics`` and ``postline status``.

Every node keeps an index of every delivery in the cluster's spool (backends/jetstream/
index.py) and the live node set (membership.py), so any node can answer for all of them
without a query to NATS: the live nodes, and per destination queue (tenant × recipient
domain) its depth, the age of its oldest delivery, when its next delivery is due and which
node owns it. The largest queues only (``TOP``): a cluster with a million destinations
must not make a million metric series.
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from postline.api.prometheus import Family
from postline.backends.jetstream.index import Index
from postline.cluster.limits import SiteShare
from postline.cluster.membership import owner
from postline.cluster.multidc import Link

TOP = 50  # queues reported, largest first


@dataclass(frozen=True, slots=True)
class QueueRow:
    tenant: str
    domain: str
    depth: int
    oldest: float  # created_at of its oldest delivery
    next_due: float
    leased: int
    owner: str


def queue_rows(index: Index, live: frozenset[str], limit: int = TOP) -> list[QueueRow]:
    """The ``limit`` deepest queues of the cluster, deepest first: from the index's
    per-queue counts and heaps, without reading the queues' deliveries."""
    sizes = heapq.nlargest(limit, ((len(ids), key) for key, ids in index.queues.items() if ids))
    rows = []
    for depth, (tenant, domain) in sizes:
        rows.append(
            QueueRow(
                tenant=tenant,
                domain=domain,
                depth=depth,
                oldest=index.oldest(tenant, domain) or 0.0,
                next_due=index.next_due(tenant, domain) or 0.0,
                leased=index.leased.get((tenant, domain), 0),
                owner=owner(live, tenant, domain) if live else "",
            )
        )
    return rows


def info(node: str, live: frozenset[str], index: Index, now: float) -> dict[str, Any]:
    """The ``cluster`` part of the control socket's ``info`` (postline status)."""
    return {
        "node": node,
        "nodes": sorted(live),
        "deliveries": len(index.by_id),
        "queues": [
            {
                "tenant": r.tenant,
                "domain": r.domain,
                "depth": r.depth,
                "oldest_age": round(max(0.0, now - r.oldest), 3),
                "next_due_in": round(max(0.0, r.next_due - now), 3),
                "leased": r.leased,
                "owner": r.owner,
            }
            for r in queue_rows(index, live)
        ],
    }


def families(live: frozenset[str], index: Index, now: float) -> list[Family]:
    rows = queue_rows(index, live)
    labels = [(("tenant", r.tenant), ("domain", r.domain)) for r in rows]
    return [
        Family.one("cluster_nodes", "gauge", "Live nodes of the cluster (heartbeats).", len(live)),
        Family(
            "cluster_queue_depth",
            "gauge",
            f"Deliveries waiting per destination queue, the {TOP} deepest of the cluster.",
            tuple((lab, float(r.depth)) for lab, r in zip(labels, rows, strict=True)),
        ),
        Family(
            "cluster_queue_oldest_age_seconds",
            "gauge",
            f"Age of the oldest delivery per destination queue, the {TOP} deepest.",
            tuple((lab, max(0.0, now - r.oldest)) for lab, r in zip(labels, rows, strict=True)),
        ),
    ]


def share_families(shares: Mapping[str, tuple[SiteShare, Any]]) -> list[Family]:
    """This node's share of each site's cluster-wide limits (shared_limits.py), the
    ``TOP`` sites with the largest limits: what this node may use now, of how much."""
    top = sorted(shares.values(), key=lambda s: (-s[0].limit, s[0].key))[:TOP]
    labels = [(("site", s.key),) for s, _ in top]
    return [
        Family(
            "cluster_site_connection_share",
            "gauge",
            "Connections to the site this node may hold now (its share of the site's limit).",
            tuple((lab, float(s.effective)) for lab, (s, _) in zip(labels, top, strict=True)),
        ),
        Family(
            "cluster_site_connection_limit",
            "gauge",
            "The site's connection limit for the whole cluster.",
            tuple((lab, float(s.limit)) for lab, (s, _) in zip(labels, top, strict=True)),
        ),
        Family(
            "cluster_site_rate_share",
            "gauge",
            "Messages per second to the site this node may send now (0: no rate limit).",
            tuple((lab, s.rate_now()) for lab, (s, _) in zip(labels, top, strict=True)),
        ),
    ]


def link_families(link: Link) -> list[Family]:
    """The link to each other datacenter (multidc.py) and whether this one is fenced."""
    peers = sorted(link.peers.values(), key=lambda p: p.name)
    labels = [(("datacenter", p.name),) for p in peers]
    return [
        Family(
            "datacenter_link_up",
            "gauge",
            "1 while the other datacenter's copies of this one's streams answer.",
            tuple((lab, float(p.up)) for lab, p in zip(labels, peers, strict=True)),
        ),
        Family(
            "datacenter_mirrored",
            "gauge",
            "1 when this datacenter holds copies of the other's streams.",
            tuple((lab, float(p.mirrored)) for lab, p in zip(labels, peers, strict=True)),
        ),
        Family.one(
            "datacenter_fenced",
            "gauge",
            "1 when another datacenter failed this one over: it accepts and delivers nothing.",
            float(link.fenced_by is not None),
        ),
    ]
