"""`tether init`, `tether up`, `tether serve`."""

from __future__ import annotations

import logging
from pathlib import Path

import click

from tether.cli._common import console, json_option, output, run, state_dir_option
from tether.config import CONFIG_FILE, load_settings
from tether.runtime import Runtime, init_state_dir
from tether.server.instance import claim


@click.command()
@state_dir_option
@click.option("--force", is_flag=True, help="Overwrite the config, catalog and policies.")
@json_option
def init(state_dir: Path, force: bool, as_json: bool) -> None:
    """Create a state directory with a config, an example catalog and example policies."""
    written = init_state_dir(state_dir, force=force)
    output(
        {"state_dir": str(state_dir.absolute()), "written": [str(p) for p in written]},
        as_json,
        lambda d: console.print(
            f"[green]✓[/] state directory [bold]{d['state_dir']}[/] ({len(d['written'])} files written)"
        ),
    )


def _serve(state_dir: Path, store: str | None, listen: str | None, workers: int = 1) -> None:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = run(lambda: load_settings(state_dir, overrides={"store": store, "listen": listen}))
    from tether.server.tls import files as tls_files

    tls = tls_files(settings)
    if tls is not None:
        run(tls.context)  # a wrong certificate or key is reported before anything starts
    scheme = "https" if tls is not None else "http"
    # Before anything touches the state directory's sockets or store: one broker per state dir.
    lock = run(lambda: claim(settings.state_dir, settings.listen))
    if workers > 1:
        from tether.server.workers import serve_workers

        def announce() -> None:
            console.print(
                f"[green]✓[/] tether listening on [bold]{scheme}://{settings.listen}[/] "
                f"with {workers} workers "
                f"(environment [bold]{settings.environment}[/])"
            )
            console.print(f"  admin socket {settings.admin_socket}   stop with Ctrl-C")

        try:
            status = serve_workers(settings, workers, on_ready=announce)
        finally:
            lock.release()
        raise SystemExit(status)
    try:
        rt: Runtime = run(lambda: Runtime.start(settings))
    except BaseException:
        lock.release()
        raise
    from tether.server.http_protocol import run as run_loop
    from tether.server.serve import serve

    def ready() -> None:
        console.print(
            f"[green]✓[/] tether listening on [bold]{scheme}://{settings.listen}[/] "
            f"(environment [bold]{settings.environment}[/], store {rt.db.dialect}, "
            f"policy {rt.engine.bundle.version})"
        )
        console.print(f"  admin socket {settings.admin_socket}   stop with Ctrl-C")

    try:
        run_loop(serve(rt, on_ready=ready))
    except KeyboardInterrupt:
        pass
    finally:
        rt.close()
        lock.release()


@click.command()
@state_dir_option
@click.option("--store", help="Store URL (sqlite:///… or postgresql://…); overrides the config.")
@click.option("--listen", help="HOST:PORT to listen on; overrides the config.")
def up(state_dir: Path, store: str | None, listen: str | None) -> None:
    """Initialize the state directory if needed, then run the broker in the foreground."""
    if not (state_dir / CONFIG_FILE).exists():
        init_state_dir(state_dir)
        console.print(f"[green]✓[/] initialized [bold]{state_dir.absolute()}[/]")
    _serve(state_dir, store, listen)


@click.command()
@state_dir_option
@click.option("--store", help="Store URL (sqlite:///… or postgresql://…); overrides the config.")
@click.option("--listen", help="HOST:PORT to listen on; overrides the config.")
@click.option(
    "--workers",
    type=click.IntRange(1, 64),
    default=1,
    show_default=True,
    help="Broker processes sharing the listening socket (one per core). Each writes its own "
    "audit chain (`<node_id>-w<i>`); only the first serves the admin and Workload API sockets "
    "and runs the periodic jobs.",
)
def serve(state_dir: Path, store: str | None, listen: str | None, workers: int) -> None:
    """Run the broker from an existing state directory (see `tether init`)."""
    _serve(state_dir, store, listen, workers)


def register(main: click.Group) -> None:
    main.add_command(init)
    main.add_command(up)
    main.add_command(serve)
