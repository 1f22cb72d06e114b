"""A TCP proxy that delivers everything late: a slow network link between two local
processes (for example the route between two NATS servers of a cluster)."""

from __future__ import annotations

import asyncio
import contextlib
import threading

from devstack.ports import free_port


class DelayProxy:
    """Forwards connections to its ``port`` on to ``target_port``, each chunk of bytes
    ``delay`` seconds late in both directions, in order."""

    def __init__(self, target_port: int, delay: float) -> None:
        self.port = free_port()
        self.target_port = target_port
        self.delay = delay
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None

    def start(self) -> None:
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._connection, "127.0.0.1", self.port), self._loop
        ).result(5)

    def stop(self) -> None:
        async def shut() -> None:
            if self._server is not None:
                self._server.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(shut(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(
                "127.0.0.1", self.target_port
            )
        except OSError:
            writer.close()
            return
        await asyncio.gather(
            self._pipe(reader, upstream_writer),
            self._pipe(upstream_reader, writer),
            return_exceptions=True,
        )

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        late: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def send() -> None:
            while True:
                due, chunk = await late.get()
                await asyncio.sleep(max(due - loop.time(), 0))
                if not chunk:
                    break
                writer.write(chunk)
                await writer.drain()
            writer.close()

        sender = asyncio.create_task(send())
        try:
            while chunk := await reader.read(65536):
                late.put_nowait((loop.time() + self.delay, chunk))
        finally:
            late.put_nowait((loop.time() + self.delay, b""))
            with contextlib.suppress(Exception):
                await sender
