"""Wiring and lifecycle: settings -> API client -> poller -> exposition -> HTTP, on a scheduler.

APScheduler's AsyncIOScheduler ticks the poller: first at start, then every interval, never two
ticks at once (max_instances=1, coalesce). SIGTERM and SIGINT stop everything within seconds.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import httpx
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from prometheus_client import disable_created_metrics

from ckpt_exporter import __version__
from ckpt_exporter.api import ApiClient
from ckpt_exporter.entra import TOKEN_FAILURE_REASONS, EntraAuth, TokenSource
from ckpt_exporter.exposition import ExpositionCache
from ckpt_exporter.filestamp import file_stamp
from ckpt_exporter.listen import bind_address
from ckpt_exporter.listing import Discovery, Shard
from ckpt_exporter.logging_setup import set_level
from ckpt_exporter.poller import Poller
from ckpt_exporter.reloads import RestartNotices, restart_changes
from ckpt_exporter.selfmetrics import SelfMetrics
from ckpt_exporter.server import MetricsApp, MetricsServer
from ckpt_exporter.settings import AccountSettings, Settings, SettingsError
from ckpt_exporter.transport import ApiKeyAuth, KeySource, make_http_client
from ckpt_exporter.webconfig import WebConfig, load_web_config

log = logging.getLogger(__name__)

SHUTDOWN_GRACE_SECONDS = 5.0


def configure_process() -> None:
    """Process-wide settings of prometheus_client, once at start-up.

    No *_created series: they double the self-metrics and no dashboard or rule uses them.
    """
    disable_created_metrics()  # type: ignore[no-untyped-call]


def api_headers(account: AccountSettings) -> dict[str, str]:
    headers = {"User-Agent": f"ckpt-exporter/{__version__}", "Accept": "application/json"}
    if account.api_flavor == "openai":
        if account.organization:
            headers["OpenAI-Organization"] = account.organization
        if account.project:
            headers["OpenAI-Project"] = account.project
    return headers


def discovery_of(account: AccountSettings) -> Discovery | None:
    if not account.discover:
        return None
    max_age = account.discovery_max_age_days
    return Discovery(
        interval=account.discovery_interval_seconds,
        statuses=frozenset(account.discovery_statuses),
        max_age_seconds=max_age * 86400.0 if max_age is not None else None,
        metadata=dict(account.discovery_metadata),
        model_pattern=account.discovery_model_pattern,
        suffix_pattern=account.discovery_suffix_pattern,
    )


@dataclass
class Account:
    """One account's own HTTP client (its URL, key, headers), API client and poller."""

    name: str
    http: httpx.AsyncClient
    poller: Poller
    tokens: TokenSource | None = None  # keyless (azure_auth: entra)


def account_auth(
    account: AccountSettings, metrics: SelfMetrics, request_timeout: float = 30.0
) -> tuple[httpx.Auth, TokenSource | None]:
    """OpenAI: Authorization: Bearer KEY. Azure: api-key: KEY, or Bearer <Entra ID token>."""
    if account.api_flavor == "azure" and account.azure_auth == "entra":
        for reason in TOKEN_FAILURE_REASONS:
            metrics.token_failures.labels(account.name, reason)
        tokens = TokenSource(
            account.azure_token_scope,
            account=account.name,
            client_id=account.azure_client_id,
            on_failure=lambda reason: metrics.token_failures.labels(account.name, reason).inc(),
            # Within the request's own time limit (3x the timeout), so that a hung identity
            # endpoint is a token failure rather than a request timeout.
            fetch_timeout=2 * request_timeout,
        )
        return EntraAuth(tokens), tokens
    keys = KeySource(account.read_api_key(), account.api_key_file)
    return ApiKeyAuth(keys, "api-key" if account.api_flavor == "azure" else "Authorization"), None


def build_account(
    account: AccountSettings, settings: Settings, jobs: ExpositionCache, metrics: SelfMetrics
) -> Account:
    """One account's client: its URL, sign-in (account_auth), headers and Azure's api-version."""
    if account.api_flavor == "azure" and (account.organization or account.project):
        log.warning(
            "account %s: organization and project are OpenAI's headers; they are not sent to Azure",
            account.name,
        )
    auth, tokens = account_auth(account, metrics, settings.request_timeout_seconds)
    http = make_http_client(
        account.api_base_url,
        auth=auth,
        headers=api_headers(account),
        timeout=settings.request_timeout_seconds,
        max_connections=settings.max_concurrency,
        transport=settings.http_transport,
        params={"api-version": account.api_version} if account.api_version else None,
    )
    client = ApiClient(
        http,
        max_retries=settings.max_retries,
        max_in_flight=settings.max_concurrency,
        max_requests_per_second=settings.max_requests_per_second,
        observe=metrics.observe_request,
        observe_wait=metrics.rate_limit_wait.inc,
        account=account.name,
        reauthentication=auth if isinstance(auth, EntraAuth) else None,
    )
    poller = Poller(
        client,
        jobs,
        metrics,
        account=account.name,
        page_size=settings.page_size,
        full_read_every=settings.full_read_every_polls,
        poll_interval=settings.poll_interval_seconds,
        discovery=discovery_of(account),
        shard=Shard(settings.shard, settings.total_shards),
        # A job's poll makes up to two requests at once: twice as many polls keep every slot busy.
        max_active_polls=2 * settings.max_concurrency,
        keyless=tokens is not None,
        base_url=account.api_base_url,
    )
    poller.set_jobs(account.jobs)
    return Account(account.name, http, poller, tokens)


class Exporter:
    """The running exporter. `start()` binds the port and schedules polls; `stop()` undoes it.

    `config` is the settings' YAML file, if any: when it changes (a ConfigMap update, say), the job
    list is re-read before the next poll; `reload_settings` re-reads it (also on SIGHUP).
    """

    def __init__(
        self,
        settings: Settings,
        on_ready: Callable[[str], None] | None = None,
        reload_settings: Callable[[], Settings] | None = None,
        config: Path | None = None,
    ) -> None:
        self.settings = settings
        self._reload_settings = reload_settings
        self._config = config
        self._config_stamp = file_stamp(config)
        self.metrics = SelfMetrics()
        self.jobs = ExpositionCache()
        self.accounts = [
            build_account(account, settings, self.jobs, self.metrics) for account in settings.account_list()
        ]
        self.metrics.shard_ordinal.set(settings.shard)
        self.metrics.total_shards.set(settings.total_shards)
        self.server = _bind_server(
            MetricsApp(
                self.jobs,
                self.metrics,
                self.ready,
                watched_jobs=self.watched_jobs,
                telemetry_path=settings.web_telemetry_path,
            ),
            settings,
            load_web_config(settings.web_config_file) if settings.web_config_file else None,
        )
        self.scheduler = AsyncIOScheduler(timezone=UTC)
        self._on_ready = on_ready
        self._frozen = False
        self._started = False
        self._log_level = settings.log_level
        self._restart_notices = RestartNotices()

    @property
    def metrics_url(self) -> str:
        """A URL of /metrics to connect to: the first listen address, loopback for a wildcard one."""
        host, port = self.server.addresses[0]
        if host in ("0.0.0.0", "::", ""):
            host = "127.0.0.1"
        elif ":" in host:
            host = f"[{host}]"
        return f"{self.server.scheme}://{host}:{port}{self.server.telemetry_path}"

    def watched_jobs(self) -> int:
        return sum(len(account.poller.job_ids) for account in self.accounts)

    def start(self) -> None:
        self.jobs.start()
        self.server.start()
        self.scheduler.add_job(
            self.tick,
            "interval",
            seconds=self.settings.poll_interval_seconds,
            next_run_time=datetime.now(UTC),
            max_instances=1,
            coalesce=True,
            id="poll",
        )
        self.scheduler.start()
        log.info(
            "ckpt_exporter %s watching %d job(s) every %gs; serving %s",
            __version__,
            self.watched_jobs(),
            self.settings.poll_interval_seconds,
            ", ".join(self.server.urls()),
        )
        if self._on_ready is not None:
            self._on_ready(self.metrics_url)

    async def tick(self) -> None:
        """One scheduled tick: re-read a changed settings file, then tick every account's poller."""
        stamp = file_stamp(self._config)
        if stamp != self._config_stamp:
            self._config_stamp = stamp
            self.reload("the settings file changed")
        if not self._frozen and self.ready():
            self._freeze()
        for account in self.accounts:
            await account.poller.tick()

    def _freeze(self) -> None:
        """Keep what the first poll cycle built out of the garbage collector's full passes.

        With many jobs the long-lived objects (modules, every job's state) make a full collection
        long, with the GIL held: a scrape that arrived meanwhile waited for it (docs/benchmarks.md). Once
        every job has been read once, they are moved out of its sight (gc.freeze); what is created
        later is collected as usual, and our job state holds no reference cycles, so reference
        counting still frees a frozen object that is replaced or removed.
        """
        gc.collect()
        gc.freeze()
        self._frozen = True
        log.debug("%d objects frozen out of the garbage collector's passes", gc.get_freeze_count())

    def ready(self) -> bool:
        """Whether start-up is over: every job and discovery attempted once. Once ready, ready for
        good: a job added by a reload is not a reason to leave the Service (its health is job_up)."""
        if not self._started:
            self._started = all(account.poller.ready() for account in self.accounts)
        return self._started

    def reload(self, reason: str = "SIGHUP") -> None:
        """Re-read the settings and apply what a reload applies (reloads.py); keep the rest, saying so.

        Bad settings are refused whole: the running ones stay.
        """
        if self._reload_settings is None:
            return
        try:
            settings = self._reload_settings()
        except SettingsError as exc:
            log.error("settings not reloaded (%s), keeping the current ones: %s", reason, exc)
            return
        log.info("%s: settings re-read", reason)
        self._restart_notices.note(restart_changes(self.settings, settings))
        if settings.log_level != self._log_level:
            self._log_level = settings.log_level
            set_level(settings.log_level)
            log.info("settings reloaded: log_level is now %s", settings.log_level)
        wanted = {account.name: account for account in settings.account_list()}
        for account in self.accounts:
            if account.name not in wanted:
                continue
            jobs = wanted[account.name].jobs
            if jobs != account.poller.configured_job_ids():
                log.info("settings reloaded: account %s now lists %d job(s)", account.name, len(jobs))
                account.poller.set_jobs(jobs)

    async def stop(self) -> None:
        self.scheduler.shutdown(wait=False)
        pollers = [account.poller.stop() for account in self.accounts]
        try:
            await asyncio.wait_for(asyncio.gather(*pollers), SHUTDOWN_GRACE_SECONDS)
        except TimeoutError:
            log.warning("in-flight polls did not stop within %gs; abandoning them", SHUTDOWN_GRACE_SECONDS)
        for account in self.accounts:
            await account.http.aclose()
            if account.tokens is not None:
                await account.tokens.close()
        self.server.stop()
        self.jobs.stop()


def _bind_server(app: MetricsApp, settings: Settings, web: WebConfig | None) -> MetricsServer:
    """The server, bound to every listen address as check-config resolved them (OSError naming
    the address that cannot be bound: a port in use)."""
    return MetricsServer(app, [bind_address(address) for address in settings.listen_addresses()], web)


async def serve(
    settings: Settings,
    on_ready: Callable[[str], None] | None = None,
    reload_settings: Callable[[], Settings] | None = None,
    config: Path | None = None,
) -> int:
    """Run until SIGTERM or SIGINT (SIGHUP re-reads the settings); returns the exit code."""
    configure_process()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    exporter = Exporter(settings, on_ready, reload_settings, config)
    loop.add_signal_handler(signal.SIGHUP, exporter.reload)
    exporter.start()
    await stop.wait()
    log.info("shutting down")
    await exporter.stop()
    return 0
