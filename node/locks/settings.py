"""Settings of the lock service: the `[locks]` section of the node's configuration."""

from __future__ import annotations

from pydantic import Field, model_validator

from node._section import LIVE, Section
from node.locks._types import DeadlockPolicy


class LockSettings(Section):
    """Lock service settings.

    Fields marked live (`json_schema_extra={"live": True}`) take effect through
    `LockService.apply_settings` without a restart: lease and wait limits, priorities, aging, the
    deadlock policy, the grace period and the limits on resources and waiters (existing holders
    and waiters keep what they were granted). The journal, the token reservation block and every
    etcd field need a restart.
    """

    default_lease_s: float = Field(
        30.0, gt=0, description="Lease when the caller asks for none.", json_schema_extra=LIVE
    )
    max_lease_s: float = Field(
        3600.0, gt=0, description="Longest lease; longer requests are clamped.", json_schema_extra=LIVE
    )
    default_wait_s: float = Field(
        30.0, ge=0, description="Wait timeout when the caller gives none.", json_schema_extra=LIVE
    )
    max_wait_s: float = Field(
        300.0, ge=0, description="Longest wait; longer requests are clamped.", json_schema_extra=LIVE
    )
    session_grace_s: float = Field(
        10.0,
        ge=0,
        description="After a session ends, its locks are released after this grace period.",
        json_schema_extra=LIVE,
    )
    deadlock_policy: DeadlockPolicy = Field(
        DeadlockPolicy.ABORT_WAITER,
        description="abort-waiter: refuse the lowest-priority waiter on the cycle with Deadlock; "
        "preempt-holder: revoke the lowest-priority holder's lock.",
        json_schema_extra=LIVE,
    )
    default_priority: int = Field(
        0, ge=0, description="Priority when the caller gives none.", json_schema_extra=LIVE
    )
    max_priority: int = Field(
        100,
        ge=0,
        le=1_000_000,
        description="Highest priority (0 is the lowest).",
        json_schema_extra=LIVE,
    )
    aging_interval_s: float = Field(
        0.0,
        ge=0,
        description="A waiter gains aging_step priority per interval waited (0 = no aging).",
        json_schema_extra=LIVE,
    )
    aging_step: int = Field(
        1, ge=1, description="Priority gained per aging interval.", json_schema_extra=LIVE
    )
    max_resources: int = Field(
        10_000,
        ge=1,
        description="Most resources with holders or waiters at once.",
        json_schema_extra=LIVE,
    )
    max_waiters_per_resource: int = Field(
        1000, ge=1, description="Longest queue on one resource.", json_schema_extra=LIVE
    )
    max_name_bytes: int = Field(
        256,
        ge=8,
        le=4096,
        description="Longest resource, owner or session name (UTF-8).",
        json_schema_extra=LIVE,
    )
    token_reserve_block: int = Field(
        1024,
        ge=1,
        le=1 << 30,
        description="Fencing tokens reserved per durable counter write; after a crash a "
        "resource's tokens continue above the last reservation.",
    )
    durable_grants: bool = Field(
        False,
        description="acquire, refresh and release return only once their lease record is "
        "durable (a grant's token reservation always is).",
    )
    journal_max_backlog: int = Field(
        10_000,
        ge=1,
        description="Unwritten journal records above which grants wait for the journal.",
    )
    journal_delay_s: float = Field(
        0.005,
        ge=0,
        le=1,
        description="How long unwaited-for journal records may gather before a commit (a grant "
        "that waits for the journal commits at once).",
    )
    journal_timeout_s: float = Field(5.0, gt=0, description="Deadline of one journal commit.")
    journal_retry_s: float = Field(1.0, gt=0, description="Pause before retrying a failed journal commit.")
    watch_queue_size: int = Field(
        1024, ge=1, description="Events buffered per watcher; a watcher that falls further behind is closed."
    )
    etcd_endpoints: tuple[str, ...] = Field(
        (),
        description="etcd v3 JSON gateway URLs (http://host:2379). Empty = no cluster locks.",
    )
    etcd_key_prefix: str = Field(
        "/asgard/locks/", min_length=1, description="Key prefix of cluster locks in etcd."
    )
    cluster_prefixes: tuple[str, ...] = Field(
        ("cluster/",),
        description="Resources whose names start with one of these are cluster-wide (etcd).",
    )
    etcd_lease_ttl_s: int = Field(
        10, ge=2, le=3600, description="TTL of the node's etcd lease (kept alive at TTL/3)."
    )
    etcd_request_timeout_s: float = Field(2.0, gt=0, description="Deadline of one etcd request.")
    etcd_connect_timeout_s: float = Field(1.0, gt=0, description="Deadline of one TCP connect to etcd.")

    @model_validator(mode="after")
    def _check_ranges(self) -> LockSettings:
        if self.default_lease_s > self.max_lease_s:
            raise ValueError("default_lease_s must not exceed max_lease_s")
        if self.default_wait_s > self.max_wait_s:
            raise ValueError("default_wait_s must not exceed max_wait_s")
        if self.default_priority > self.max_priority:
            raise ValueError("default_priority must not exceed max_priority")
        for url in self.etcd_endpoints:
            if not url.startswith("http://"):
                raise ValueError(f"etcd endpoint must be an http:// URL: {url!r}")
        return self

    def is_cluster_resource(self, resource: str) -> bool:
        """Whether `resource` is locked in etcd (needs endpoints and a matching prefix)."""
        return bool(self.etcd_endpoints) and resource.startswith(self.cluster_prefixes)
