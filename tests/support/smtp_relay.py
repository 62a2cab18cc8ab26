#!/usr/bin/env python3
"""A small SMTP relay for tests of what smtp-sink cannot do: STARTTLS, AUTH
and SMTPUTF8. Standard library only. Each accepted message is written to
DIR/N.eml with DIR/N.json describing its session (TLS, AUTH user, envelope,
SMTPUTF8). Loopback only; stops when killed.

usage: smtp_relay.py --port P (0: any; written to DIR/port) --dir DIR [--cert C --key K] [--user U --password W] [--smtputf8]
                     [--defer-percent P] [--drop-mid-data-percent P]

--defer-percent P answers 451 4.2.1 to the first RCPT of about P% of the
recipients (chosen by CRC-32 of the address, so the share is stable) and
accepts them when they are tried again. Each deferral is logged to
DIR/deferred.log, one address per line.

--drop-mid-data-percent P closes the connection half way through the
content of the first message to about P% of the recipients (a different
CRC-32 share), without a reply; that message is not kept. Each drop is
logged to DIR/dropped.log.
"""
import argparse
import asyncio
import base64
import itertools
import json
import os
import ssl
import zlib

counter = itertools.count()
deferred_once = set()
dropped_once = set()


async def session(reader, writer, args, tls_ctx):
    try:
        await converse(reader, writer, args, tls_ctx)
    except (ssl.SSLError, ConnectionError, asyncio.IncompleteReadError):
        # A client that rejects our certificate, or hangs up: its business.
        writer.close()


async def converse(reader, writer, args, tls_ctx):
    state = {"tls": False, "auth": None, "mail": None, "rcpt": [], "smtputf8": False}

    async def say(line):
        writer.write((line + "\r\n").encode())
        await writer.drain()

    await say("220 relay.test ESMTP test relay")
    while True:
        raw = await reader.readline()
        if not raw:
            break
        line = raw.decode("utf-8", "replace").rstrip("\r\n")
        verb = line.split(" ", 1)[0].upper()
        arg = line[len(verb):].strip()
        if verb in ("EHLO", "HELO"):
            ext = ["relay.test", "8BITMIME", "SIZE 52428800"]
            if args.smtputf8:
                ext.append("SMTPUTF8")
            if tls_ctx and not state["tls"]:
                ext.append("STARTTLS")
            if args.user and (state["tls"] or not tls_ctx):
                ext.append("AUTH PLAIN LOGIN")
            for e in ext[:-1]:
                await say("250-" + e)
            await say("250 " + ext[-1])
        elif verb == "STARTTLS" and tls_ctx and not state["tls"]:
            await say("220 2.0.0 Ready to start TLS")
            await writer.start_tls(tls_ctx)
            state["tls"] = True
        elif verb == "AUTH" and args.user:
            parts = arg.split(" ")
            mech = parts[0].upper()
            if mech == "PLAIN":
                if len(parts) > 1:
                    blob = parts[1]
                else:
                    await say("334 ")
                    blob = (await reader.readline()).decode().strip()
                fields = base64.b64decode(blob).split(b"\0")
                user, password = fields[1].decode(), fields[2].decode()
            elif mech == "LOGIN":
                await say("334 VXNlcm5hbWU6")
                user = base64.b64decode((await reader.readline()).strip()).decode()
                await say("334 UGFzc3dvcmQ6")
                password = base64.b64decode((await reader.readline()).strip()).decode()
            else:
                await say("504 5.5.4 Unrecognized authentication type")
                continue
            if user == args.user and password == args.password:
                state["auth"] = user
                await say("235 2.7.0 Authentication successful")
            else:
                await say("535 5.7.8 Authentication credentials invalid")
        elif verb == "MAIL":
            if args.user and not state["auth"]:
                await say("530 5.7.0 Authentication required")
                continue
            state["mail"] = arg
            state["rcpt"] = []
            state["smtputf8"] = "SMTPUTF8" in arg.upper()
            await say("250 2.1.0 Ok")
        elif verb == "RCPT":
            addr = arg.split(":", 1)[-1].split(">", 1)[0].strip(" <").lower()
            if (args.defer_percent and addr not in deferred_once
                    and zlib.crc32(addr.encode()) % 100 < args.defer_percent):
                deferred_once.add(addr)
                with open(os.path.join(args.dir, "deferred.log"), "a") as f:
                    f.write(addr + "\n")
                await say("451 4.2.1 Mailbox busy, try again later")
                continue
            state["rcpt"].append(arg)
            await say("250 2.1.5 Ok")
        elif verb == "DATA":
            await say("354 End data with <CR><LF>.<CR><LF>")
            rcpts = [r.split(":", 1)[-1].split(">", 1)[0].strip(" <").lower() for r in state["rcpt"]]
            drop = [r for r in rcpts if args.drop_mid_data_percent and r not in dropped_once
                    and zlib.crc32(b"drop:" + r.encode()) % 100 < args.drop_mid_data_percent]
            data = bytearray()
            while True:
                chunk = await reader.readline()
                if not chunk or chunk == b".\r\n":
                    break
                if chunk.startswith(b".."):
                    chunk = chunk[1:]
                data += chunk
                if drop and len(data) >= 256:  # headers alone are longer
                    break
            if drop:
                dropped_once.update(drop)
                with open(os.path.join(args.dir, "dropped.log"), "a") as f:
                    f.write("".join(r + "\n" for r in drop))
                writer.transport.abort()
                return
            n = next(counter)
            with open(os.path.join(args.dir, f"{n}.eml"), "wb") as f:
                f.write(data)
            meta = {k: state[k] for k in ("tls", "auth", "mail", "rcpt", "smtputf8")}
            # Written under a temporary name and renamed, so a reader never
            # sees half a session (N.eml is complete before N.json exists).
            tmp = os.path.join(args.dir, f".{n}.json")
            with open(tmp, "w") as f:
                json.dump(meta, f)
            os.replace(tmp, os.path.join(args.dir, f"{n}.json"))
            await say(f"250 2.0.0 Ok: queued as T{n}")
        elif verb == "RSET":
            state["mail"], state["rcpt"] = None, []
            await say("250 2.0.0 Ok")
        elif verb == "NOOP":
            await say("250 2.0.0 Ok")
        elif verb == "QUIT":
            await say("221 2.0.0 Bye")
            break
        else:
            await say("502 5.5.2 Command not recognized")
    writer.close()


async def main():
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--dir", required=True)
    p.add_argument("--cert")
    p.add_argument("--key")
    p.add_argument("--user")
    p.add_argument("--password")
    p.add_argument("--smtputf8", action="store_true")
    p.add_argument("--defer-percent", type=int, default=0)
    p.add_argument("--drop-mid-data-percent", type=int, default=0)
    args = p.parse_args()
    tls_ctx = None
    if args.cert:
        tls_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls_ctx.load_cert_chain(args.cert, args.key)
    server = await asyncio.start_server(
        lambda r, w: session(r, w, args, tls_ctx), "127.0.0.1", args.port
    )
    # With --port 0 the kernel picks a free port; tell the harness which
    # (a port chosen by the harness and bound here could be taken between).
    port = server.sockets[0].getsockname()[1]
    with open(os.path.join(args.dir, "port.tmp"), "w") as f:
        f.write(str(port))
    os.rename(os.path.join(args.dir, "port.tmp"), os.path.join(args.dir, "port"))
    async with server:
        await server.serve_forever()


asyncio.run(main())
