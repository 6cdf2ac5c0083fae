from ecosistema.platform.config import Settings
from ecosistema.platform.service import Job


async def _noop(_ctx: object) -> None:
    return None


def test_a_job_interval_can_come_from_the_hosting_process_settings() -> None:
    job = Job("sweep", lambda settings: settings.orders_sweep_interval_seconds, _noop)  # type: ignore[arg-type]
    assert job.interval(Settings(orders_sweep_interval_seconds=7.5)) == 7.5
    assert job.interval(Settings(orders_sweep_interval_seconds=60)) == 60.0


def test_a_fixed_job_interval_ignores_settings() -> None:
    job = Job("purge", 3600, _noop)  # type: ignore[arg-type]
    assert job.interval(Settings()) == 3600.0
