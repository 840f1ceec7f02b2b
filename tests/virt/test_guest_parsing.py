"""Guest agent replies are untrusted: parsed into bounded, printable, typed sections; nothing else stays."""

from __future__ import annotations

import typing

from app.virt.guest import MAX_ITEMS, MAX_TEXT, parse_agent_info, parse_guest_info

REAL = {  # what libvirt 11.3 returned for the test guest (qemu-ga 7.2), trimmed
    "os.id": "debian",
    "os.name": "Debian GNU/Linux",
    "os.pretty-name": "Debian GNU/Linux 12 (bookworm)",
    "os.version": "12 (bookworm)",
    "os.version-id": "12",
    "os.kernel-release": "6.1.0-41-cloud-amd64",
    "os.kernel-version": "#1 SMP PREEMPT_DYNAMIC Debian 6.1.158-1",
    "os.machine": "x86_64",
    "hostname": "test-vmi",
    "timezone.name": "UTC",
    "timezone.offset": 0,
    "user.count": 0,
    "fs.count": 1,
    "fs.0.name": "vda",
    "fs.0.mountpoint": "/mnt/data",
    "fs.0.fstype": "ext4",
    "fs.0.total-bytes": 61000000,
    "fs.0.used-bytes": 24576,
    "if.count": 2,
    "if.0.name": "lo",
    "if.0.hwaddr": "00:00:00:00:00:00",
    "if.0.addr.count": 1,
    "if.0.addr.0.type": "ipv4",
    "if.0.addr.0.addr": "127.0.0.1",
    "if.0.addr.0.prefix": 8,
    "if.1.name": "eth0",
    "if.1.hwaddr": "52:54:00:12:34:56",
    "if.1.addr.count": 2,
    "if.1.addr.0.type": "ipv4",
    "if.1.addr.0.addr": "10.0.2.15",
    "if.1.addr.0.prefix": 24,
    "if.1.addr.1.type": "ipv6",
    "if.1.addr.1.addr": "fe80::5054:ff:fe12:3456",
    "if.1.addr.1.prefix": 64,
}


def real_report() -> dict[str, typing.Any]:
    return parse_guest_info(REAL) | parse_agent_info(
        {
            "version": "7.2.22",
            "supported_commands": [
                {"name": "guest-ping", "enabled": True},
                {"name": "guest-exec", "enabled": False},
            ],
        }
    )


def test_a_real_report() -> None:
    report = real_report()
    assert report["osInfo"]["prettyName"] == "Debian GNU/Linux 12 (bookworm)"
    assert report["hostname"] == "test-vmi" and report["timezone"] == {"name": "UTC", "offset": 0}
    assert report["filesystems"] == [
        {"name": "vda", "mountpoint": "/mnt/data", "type": "ext4", "totalBytes": 61000000, "usedBytes": 24576}
    ]
    assert report["agentVersion"] == "7.2.22" and report["supportedCommands"] == ["guest-ping"]


def test_hostile_replies_are_bounded_and_cleaned() -> None:
    hostile = {
        "hostname": "x" * 100_000 + "\x1b[31m",
        "os.pretty-name": "evil\x00\n\x07name",
        "user.count": 10**9,
        "fs.count": -5,
        "if.count": "lots",
        "timezone.offset": 10**12,
        **{f"user.{i}.name": f"u{i}" for i in range(200)},
        "user.3.login-time": -1,
    }
    report = parse_guest_info(hostile)
    assert len(report["hostname"]) == MAX_TEXT and report["hostname"].isprintable()
    assert report["osInfo"]["prettyName"] == "evilname"
    assert len(report["users"]) == MAX_ITEMS and report["users"][3]["loginTime"] is None
    assert report["filesystems"] == [] and report["interfaces"] == []
    assert report["timezone"]["offset"] is None
    for bad in (None, "garbage", [1, 2], {"version": {"nested": 1}, "supported_commands": "all"}):
        info = parse_agent_info(bad)
        assert info["supportedCommands"] == [] and (
            info["agentVersion"] is None or info["agentVersion"].isprintable()
        )


def test_exec_replies_are_bounded_and_malformed_ones_refused() -> None:
    import base64

    import pytest

    from app.virt.guest import MAX_OUTPUT, MalformedReply, exec_result

    big = base64.b64encode(b"x" * (MAX_OUTPUT + 10)).decode()
    reply = {"exited": True, "exitcode": 0, "out-data": big, "err-data": "", "err-truncated": True}
    result = exec_result(reply, timed_out=False)
    assert len(result["stdout"]) == MAX_OUTPUT and result["stdoutTruncated"] and result["stderrTruncated"]
    assert exec_result({"exited": False}, timed_out=True) == {
        "exitCode": None,
        "signal": None,
        "timedOut": True,
        "stdout": b"",
        "stdoutTruncated": False,
        "stderr": b"",
        "stderrTruncated": False,
    }
    assert exec_result({"exitcode": -1, "signal": "nine"}, timed_out=False)["exitCode"] is None
    for bad in ("not base64!", 42, ["list"]):
        with pytest.raises(MalformedReply):
            exec_result({"exited": True, "out-data": bad}, timed_out=False)
