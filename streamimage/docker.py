"""The docker-archive writer: the reference's image, member for member.

ASYNC; frames layers with tarwriter and pipeline.
Rule: members in the reference's order (base layers, store layers, customisation layer,
config, manifest.json last); manifest.json is written only once every layer is proved,
so an archive cut short by any failure is never a loadable image.
"""

from __future__ import annotations

import time

import anyio
import anyio.to_thread
from anyio.from_thread import check_cancelled

from streamimage.baseimage import BaseImage
from streamimage.customisation import Customisation
from streamimage.imagejson import Digest, LayerRecord, docker_manifest, image_config, merge_env
from streamimage.layer import layer_chunks
from streamimage.pipeline import HashPass, Sink, Timeline
from streamimage.report import Reporter
from streamimage.spec import Conf, Options
from streamimage.tarheader import HeaderEncoder
from streamimage.tarwriter import TarWriter


async def write_docker_archive(
    conf: Conf,
    base: BaseImage | None,
    customisation: Customisation,
    sink: Sink,
    reporter: Reporter,
    options: Options,
) -> None:
    """Write the image as a docker-archive to ``sink``.

    Raises:
        StreamImageError: any failure; the archive is then left without manifest.json.
    """
    tar = TarWriter(sink, conf.mtime)
    encoder = HeaderEncoder(
        uid=conf.uid, gid=conf.gid, uname=conf.uname, gname=conf.gname, mtime=conf.mtime
    )
    timelines = [Timeline() for _ in conf.store_layers]
    records: list[LayerRecord] = []
    custom_verified = anyio.Event()

    async def verify_customisation() -> None:
        await anyio.to_thread.run_sync(customisation.verify, check_cancelled)
        custom_verified.set()

    async with anyio.create_task_group() as tg:
        hashes = HashPass(
            conf.store_layers,
            encoder,
            options.hash_workers,
            timelines,
            processes=options.hash_in_processes,
        )
        hashes.start(tg)
        tg.start_soon(verify_customisation)

        if base is None:
            reporter.line("No 'fromImage' provided")
        else:
            for number, layer in enumerate(base.layers, start=1):
                await tar.add_stream(layer.header(), layer.size, base.chunks(layer), layer.name)
                reporter.line(f"Adding base layer {number} from {layer.name}")
                records.append(LayerRecord(layer.diff_id, layer.name, [layer.name]))

        for index, paths in enumerate(conf.store_layers):
            reporter.line(f"Creating layer {len(records) + 1} from paths: {list(paths)!r}")
            result = await hashes.result(index)
            name = f"{result.diff_id.hex}/layer.tar"
            timelines[index].stream_start = time.monotonic()
            chunks = layer_chunks(paths, encoder, result.witness.check)
            await tar.add_stream(tar.header(name, result.size), result.size, chunks, name)
            result.witness.check_complete(name)
            timelines[index].stream_end = time.monotonic()
            records.append(LayerRecord(result.diff_id, name, paths))

        reporter.line(f"Creating layer {len(records) + 1} with customisation...")
        await custom_verified.wait()
        name = f"{customisation.diff_id.hex}/layer.tar"
        span = customisation.span
        await tar.add_stream(customisation.header(name, conf.mtime), span.size, iter([span]), name)
        records.append(LayerRecord(customisation.diff_id, name, [customisation.directory]))

        reporter.line("Adding manifests...")
        config = merge_env(base.config, conf.config) if base is not None else conf.config
        config_json = image_config(
            created=conf.created, architecture=conf.architecture, config=config, layers=records
        )
        config_name = f"{Digest.of(config_json).hex}.json"
        await tar.add_bytes(config_name, config_json)
        await tar.add_bytes(
            "manifest.json",
            docker_manifest(config_name, conf.repo_tag, [r.member for r in records]),
        )
        await tar.close()
    reporter.line("Done.")
    reporter.timeline([f"layer {i + 1}" for i in range(len(timelines))], timelines)
    reporter.summary(len(records), sink.written)
