#!/usr/bin/env python3
"""Writes the seed corpora under fuzz/corpus/<target>/ from the protocol notes (shared/protocols/).

Each target gets valid messages plus truncated, malformed, oversized, deeply nested, wrongly typed and
unicode-edge-case variants of them. File names are `seed-<sha1 prefix>` so re-running is idempotent and
`cargo fuzz cmin` output (content-hash names) can sit beside them.

    python3 fuzz/seeds.py            # from the repository root
"""
import hashlib
import json
import os
import sys

ROOT = os.path.dirname(os.path.abspath(__file__))
CORPUS = os.path.join(ROOT, "corpus")


def write(target, data):
    if isinstance(data, str):
        data = data.encode("utf-8", "surrogatepass")
    d = os.path.join(CORPUS, target)
    os.makedirs(d, exist_ok=True)
    name = "seed-" + hashlib.sha1(data).hexdigest()[:16]
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def js(v):
    return json.dumps(v, separators=(",", ":"), ensure_ascii=False)


WRONG = [None, True, -1, 0, 1.5, 1e308, -9223372036854775809, 18446744073709551616, "", "x", "１２", [], {}, [1], {"a": 1}]
UNICODE = ["\u0000", "\ufeff", "\u202e", "é", "\U0001F600", "\\ud800", "a\u0301", "\u2028", " 1 "]


def variants(text, obj=None):
    """Malformed, truncated, nested, oversized and unicode variants of one JSON text."""
    out = [text]
    out.append(text[: len(text) // 2])  # truncated
    out.append(text[:-1])
    out.append(text + ",")
    out.append(text.replace("}", ",}").replace("]", ",]"))  # trailing commas
    out.append(text.replace(":", ": ").replace(",", " ,\n"))  # whitespace
    out.append(text.replace('"', "'"))  # not JSON
    if isinstance(obj, dict) and obj:
        key = next(iter(obj))
        for w in WRONG[:8]:
            o = dict(obj)
            o[key] = w
            out.append(js(o))
        last = list(obj)[-1]
        for u in UNICODE[:5]:
            o = dict(obj)
            o[last] = u
            out.append(js(o))
        o = dict(obj)
        o[last] = json.loads(deep(40))
        out.append(js(o))
        o = dict(obj)
        o[key.upper()] = o.pop(key)
        out.append(js(o))
    return out


def deep(n, open_="[", close="]"):
    return open_ * n + close * n


def raw_bytes():
    return [b"\xff\xfe", b"\xc0\xaf", b"{\"a\":\"\xed\xa0\x80\"}", b"\x00", b""]


# ---------------------------------------------------------------------------------------------------------------
# TM20 (tm20.md and the real-traffic corpus)
# ---------------------------------------------------------------------------------------------------------------

def tm20_frames():
    frames = []
    corpus = os.path.join(ROOT, "..", "..", "shared", "protocols", "tm20-corpus", "terminal_frames.jsonl")
    corpus = os.environ.get("TM20_CORPUS", corpus)
    if not os.path.exists(corpus):
        corpus = "/work/shared/protocols/tm20-corpus/terminal_frames.jsonl"
    seen = set()
    if os.path.exists(corpus):
        for line in open(corpus, encoding="utf-8"):
            rec = json.loads(line)
            raw = rec["raw"]
            key = (rec["name"], tuple(rec.get("quirks") or []))
            if key in seen or len(raw) > 4000:
                continue
            seen.add(key)
            frames.append(raw)
    reg = {"cmd": "reg", "sn": "ZX1369063044", "cpusn": "123456789", "devinfo": {"modelname": "tfs30", "usersize": 3000, "firmware": "AiFP50V_v4.40", "time": "2019-07-12 18:40:45"}}
    sendlog = {"cmd": "sendlog", "sn": "ZX1369063044", "count": 2, "logindex": 0, "record": [
        {"enrollid": 1, "time": "2019-07-12 15:45:41", "mode": 5, "inout": 0, "event": 0, "temp": 365, "verifymode": 1, "name": "A", "aliasid": "7"},
        {"enrollid": "2", "time": "2019/07/12 15:47:55", "mode": "5", "inout": 1, "event": 0}]}
    senduser = {"cmd": "senduser", "sn": "ZX1369063044", "enrollid": 1, "name": "chingzou", "backupnum": 0, "admin": "0", "record": "0002(2)01(3)a005"}
    qr = {"cmd": "sendqrcode", "sn": "ZX1369063044", "record": "https://example.com/q/123"}
    reply = {"ret": "getdevlock", "result": True, "sn": "ZX1369063044", "opendelay": 5, "InputAlarm": 0, "dayzone": [{"day": [{"section": "08:00~18:00"}]}]}
    for obj in [reg, sendlog, senduser, qr, reply, {"cmd": "heartbeat", "sn": "X"}, {"cmd": "reg", "ret": "getuserinfo", "sn": "X"}]:
        frames.extend(variants(js(obj), obj))
    frames += [
        '{"cmd":"sendlog","record":[0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0]}',
        '{"cmd":"sendlog","record":[{},{},{},{}],"count":-1}',
        '{"cmd":"reg","sn":"' + "A" * 65 + '"}',
        '{"cmd":"reg","sn":12345}',
        '{"cmd":"reg","sn":"  "}',
        '{"ret":"getalllog","result":true,"record":[1,2,3,],}',
        '{"ret":"x","s":"a,]b\\",]"}',
        '{"Cmd":" SENDUSER ","enrollid":1.0,"backupnum":"50","record":2352253.0}',
        '{"cmd":"senduser","enrollid":1e300,"backupnum":0}',
        '{"cmd":"sendlog","record":[{"enrollid":1,"time":"2019-02-30 25:61:61"}]}',
        '{"ret":"getuserinfo","record":"' + "ab" * 4000 + '"}',
        deep(200, '{"ret":"x","a":[', "]}"),
        deep(120),
        "[]", "null", '"cmd"', "{}", '{"cmd":null,"ret":null}', '{"cmd":"","ret":""}',
    ]
    for f in frames:
        write("tm20_frame", f)
    for b in raw_bytes():
        write("tm20_frame", b)


TM20_COMMANDS = {
    "getuserlist": [{}],
    "getuserinfo": [{"enrollid": 1, "backupnum": 50}],
    "setuserinfo": [
        {"enrollid": 1, "name": "chingzou", "backupnum": 0, "admin": 0, "record": "0002(2)01(3)a005"},
        {"enrollid": 1, "backupnum": 10, "record": 123456},
        {"enrollid": 1, "backupnum": 50, "record": "data:image/jpeg;base64,/9j/4AAQ"},
        {"enrollid": 1, "name": "Fulano", "verifymode": 1, "card": 123456, "pwd": 123456, "enable": 1, "shiftid": 1, "zoneid": 1,
         "groupid": 1, "birthday": "03-04", "starttime": "2023-03-02 00:00:00", "endtime": "2023-03-30 00:00:00", "backupnum": 0, "admin": 0, "record": "c52d54"},
        {"enrollid": 7, "enable": 0},
    ],
    "deleteuser": [{"enrollid": 1}, {"enrollid": 1, "backupnum": 12}],
    "getusername": [{"enrollid": 1}],
    "setusername": [{"record": [{"enrollid": 1, "name": "A"}, {"enrollid": 2, "name": "B"}]}],
    "enableuser": [{"enrollid": 1, "enflag": 1}],
    "cleanuser": [{}],
    "getnewlog": [{}],
    "getalllog": [{"from": "2020-11-13", "to": "2020-12-30"}, {}],
    "cleanlog": [{}],
    "initsys": [{}],
    "reboot": [{}],
    "reset": [None],
    "cleanadmin": [{}],
    "settime": [{"cloudtime": "2016-03-25 13:49:30"}, {}],
    "gettime": [{}],
    "setdevinfo": [{"deviceid": 1, "language": 0, "volume": 6, "screensaver": 1, "verifymode": 0, "sleep": 0, "userfpnum": 3,
                    "loghint": 1000, "reverifytime": 5, "server_verify": 1, "use_logphoto": 0, "stranger_photo": 0}],
    "getdevinfo": [{}],
    "opendoor": [{}, {"doornum": 1}, {"door": 2, "delay": 5}],
    "setdevlock": [{"opendelay": 5, "doorsensor": 0, "alarmdelay": 0, "threat": 0, "InputAlarm": 0, "antpass": 0, "interlock": 0,
                    "mutiopen": 0, "tryalarm": 0, "tamper": 0, "wgformat": 0, "wgoutput": 0, "cardoutput": 0,
                    "dayzone": [{"day": [{"section": "08:00~18:00"}, {"section": "00:00~00:00"}]}],
                    "weekzone": [{"week": [{"day": 1}, {"day": 1}, {"day": 1}, {"day": 1}, {"day": 1}, {"day": 0}, {"day": 0}]}],
                    "lockgroup": [{"group": 1234}], "nopentime": [{"day": 0}]},
                   {"inputalarm": 1}],
    "getdevlock": [{}],
    "getuserlock": [{"enrollid": 1}],
    "setuserlock": [{"record": [{"enrollid": 1, "weekzone": 1, "weekzone2": 1, "group": 1,
                                 "starttime": "2016-03-25 01:00:00", "endtime": "2099-03-25 23:59:00"}]}],
    "deleteuserlock": [{"enrollid": 1}],
    "cleanuserlock": [{}],
    "disabledevice": [{}],
    "enabledevice": [{}],
    "getquestionnaire": [{}],
    "setquestionnaire": [{"title": "inout event", "voice": "please select", "errmsg": "please select", "radio": True, "optionflag": 0,
                          "usequestion": True, "useschedule": "true", "card": 0, "items": ["in", "out"],
                          "schedules": ["00:01-11:12*1", "11:13-23:59*2"]}],
    "setholiday": [{"holidays": [{"name": "h1", "startday": "01-01", "endday": "01-01", "shift": 0, "dayzone": 0},
                                 {"name": "leap", "startday": "02-29", "endday": "03-01"}]}],
    "getholiday": [{}],
    "getallusers": [{}],
    "adduser": [{"enrollid": 888, "backupnum": 50, "admin": 0, "name": "test"}],
    "setuserprofile": [{"enrollid": 0, "profile": "text"}],
    "getuserprofile": [{"enrollid": 1}],
    "getuserids": [{}],
}


def tm20_commands():
    for name, params_list in TM20_COMMANDS.items():
        for params in params_list:
            body = "" if params is None else js(params)
            for v in variants(body, params):
                write("tm20_command", name + "\n" + v)
        write("tm20_command", " " + name.upper() + " \n{}")
        write("tm20_command", name + "\n[]")
        write("tm20_command", name + "\n{\"unknown\":1}")
    write("tm20_command", "setusername\n" + js({"record": [{"enrollid": i, "name": "n%d" % i} for i in range(60)]}))
    write("tm20_command", "setholiday\n" + js({"holidays": [{"name": "h", "startday": "01-01", "endday": "01-02"}] * 40}))
    write("tm20_command", "setuserinfo\n" + js({"enrollid": 1, "backupnum": 50, "record": "A" * 12000}))
    write("tm20_command", "nosuchcommand\n{}")
    write("tm20_command", "getalllog\n" + deep(150, '{"from":', "}"))


# ---------------------------------------------------------------------------------------------------------------
# OCPP 1.6J (ocpp16.md, ocpp16-schemas/)
# ---------------------------------------------------------------------------------------------------------------

CP_PAYLOADS = {
    "Authorize": [{"idTag": "04A2B9C2E15A80"}],
    "BootNotification": [{"chargePointVendor": "Alfen BV", "chargePointModel": "NG920-5250", "chargePointSerialNumber": "ACE0123",
                          "chargeBoxSerialNumber": "ACE0123", "firmwareVersion": "6.2.0", "iccid": "", "imsi": "",
                          "meterType": "Iskra", "meterSerialNumber": "123"}],
    "DataTransfer": [{"vendorId": "com.alfen", "messageId": "Display", "data": "hello"}, {"vendorId": "x", "data": {"a": [1, 2]}}],
    "DiagnosticsStatusNotification": [{"status": "Uploaded"}],
    "FirmwareStatusNotification": [{"status": "Installed"}],
    "Heartbeat": [{}],
    "MeterValues": [
        {"connectorId": 1, "transactionId": 1843, "meterValue": [{"timestamp": "2024-05-14T09:00:00.000Z", "sampledValue": [
            {"value": "1234.5", "context": "Sample.Periodic", "format": "Raw", "measurand": "Energy.Active.Import.Register",
             "phase": "L1", "location": "Outlet", "unit": "Wh"},
            {"value": "16", "measurand": "Current.Import", "unit": "A"}]}]},
        {"connectorId": "1", "meterValue": {"timestamp": "2024-05-14 09:00:00", "sampledValue": {"value": "1", "unit": "wh"}}},
    ],
    "StartTransaction": [{"connectorId": 1, "idTag": "04A2B9C2E15A80", "meterStart": 0, "timestamp": "2024-05-14T09:00:00.123456Z", "reservationId": 7}],
    "StatusNotification": [{"connectorId": 1, "errorCode": "NoError", "status": "Charging", "timestamp": "2024-05-14T09:00:00+02:00",
                            "info": "ok", "vendorId": "v", "vendorErrorCode": "E1"}],
    "StopTransaction": [{"transactionId": 1843, "meterStop": 12000, "timestamp": "2024-05-14T10:00:00Z", "idTag": "04A2B9C2E15A80",
                         "reason": "Local", "transactionData": [{"timestamp": "2024-05-14T10:00:00Z", "sampledValue": [{"value": "50", "unit": "Hertz"}]}]}],
    "SecurityEventNotification": [{"type": "FirmwareUpdated", "timestamp": "2024-05-14T10:00:00Z", "techInfo": "x"}],
    "SignCertificate": [{"csr": "-----BEGIN CERTIFICATE REQUEST-----\nMIIB\n-----END CERTIFICATE REQUEST-----"}],
    "SignedFirmwareStatusNotification": [{"status": "SignatureVerified", "requestId": 1}],
    "LogStatusNotification": [{"status": "Uploaded", "requestId": 2}],
}

CS_PARAMS = {
    "CancelReservation": [{"reservationId": 77}],
    "ChangeAvailability": [{"connectorId": 0, "type": "Inoperative"}],
    "ChangeConfiguration": [{"key": "HeartbeatInterval", "value": "300"}],
    "ClearCache": [{}],
    "ClearChargingProfile": [{"id": 12, "connectorId": 1, "chargingProfilePurpose": "TxDefaultProfile", "stackLevel": 0}],
    "DataTransfer": [{"vendorId": "com.alfen", "messageId": "SetDisplay", "data": "Welcome"}],
    "GetCompositeSchedule": [{"connectorId": 1, "duration": 86400, "chargingRateUnit": "W"}],
    "GetConfiguration": [{"key": ["HeartbeatInterval", "MeterValueSampleInterval"]}, {}],
    "GetDiagnostics": [{"location": "ftp://diag.example.com/uploads/", "retries": 3, "retryInterval": 60,
                        "startTime": "2024-05-13T00:00:00.000Z", "stopTime": "2024-05-14T00:00:00.000Z"}],
    "GetLocalListVersion": [{}],
    "RemoteStartTransaction": [{"connectorId": 1, "idTag": "04A2B9C2E15A80", "chargingProfile": {
        "chargingProfileId": 13, "stackLevel": 0, "chargingProfilePurpose": "TxProfile", "chargingProfileKind": "Relative",
        "chargingSchedule": {"chargingRateUnit": "W", "chargingSchedulePeriod": [{"startPeriod": 0, "limit": 11000.0}]}}}],
    "RemoteStopTransaction": [{"transactionId": 1843}],
    "ReserveNow": [{"connectorId": 2, "expiryDate": "2024-05-14T10:30:00.000Z", "idTag": "04A2B9C2E15A80", "parentIdTag": "FLEET-7", "reservationId": 77}],
    "Reset": [{"type": "Soft"}],
    "SendLocalList": [{"listVersion": 5, "updateType": "Differential", "localAuthorizationList": [
        {"idTag": "04A2B9C2E15A80", "idTagInfo": {"status": "Accepted", "expiryDate": "2025-01-01T00:00:00.000Z", "parentIdTag": "FLEET-7"}},
        {"idTag": "OLDCARD"}]}],
    "SetChargingProfile": [{"connectorId": 1, "csChargingProfiles": {
        "chargingProfileId": 12, "transactionId": 1843, "stackLevel": 1, "chargingProfilePurpose": "TxProfile",
        "chargingProfileKind": "Absolute", "validFrom": "2024-05-14T09:00:00.000Z", "validTo": "2024-05-14T18:00:00.000Z",
        "chargingSchedule": {"duration": 7200, "startSchedule": "2024-05-14T09:00:00.000Z", "chargingRateUnit": "A",
                             "chargingSchedulePeriod": [{"startPeriod": 0, "limit": 16.0, "numberPhases": 3},
                                                        {"startPeriod": 1800, "limit": 10.5}],
                             "minChargingRate": 6.0}}}],
    "TriggerMessage": [{"requestedMessage": "StatusNotification", "connectorId": 1}],
    "UnlockConnector": [{"connectorId": 1}],
    "UpdateFirmware": [{"location": "https://fw.example.com/6.2.0.bin", "retries": 2, "retrieveDate": "2024-05-15T02:00:00.000Z", "retryInterval": 300}],
}


def ocpp():
    for action, payloads in CP_PAYLOADS.items():
        for p in payloads:
            for v in variants(js(p), p):
                write("ocpp_message", action + "\n" + v)
            write("ocpp_frame", js([2, "19223201", action, p]))
            write("ocpp_frame", js([2, "x" * 37, action, p]))
    write("ocpp_message", "MeterValues\n" + js({"connectorId": 1, "meterValue": [{"timestamp": "2024-05-14T09:00:00Z", "sampledValue": [{"value": "1", "unit": "kW h"}] * 50}]}))
    write("ocpp_message", "MeterValues\n" + js({"connectorId": 1, "meterValue": [{}] * 200}))
    write("ocpp_message", "RemoteStartTransaction\n{}")
    write("ocpp_message", "Nope\n{}")
    write("ocpp_message", "Heartbeat\n" + deep(130, '{"a":', "}"))
    for action, params_list in CS_PARAMS.items():
        for p in params_list:
            for v in variants(js(p), p):
                write("ocpp_action", action + "\n" + v)
        write("ocpp_action", action.lower() + "\n")
        write("ocpp_action", action + "\n[]")
    for alias in ["reset", "remote_start", "remote_stop", "unlock_connector", "change_configuration", "get_configuration",
                  "trigger_message", "change_availability", "clear_cache", "data_transfer"]:
        write("ocpp_action", alias + "\n{}")
    write("ocpp_action", "SendLocalList\n" + js({"listVersion": 1, "updateType": "Full", "localAuthorizationList": [{}] * 300}))
    write("ocpp_action", "SetChargingProfile\n" + js({"connectorId": 1, "csChargingProfiles": {"chargingSchedule": {"chargingSchedulePeriod": [{"limit": 0.1 + i / 7} for i in range(40)]}}}))
    write("ocpp_action", "GetConfiguration\n" + js({"key": ["K" * 60] * 10}))

    frames = [
        [3, "19223201", {"status": "Accepted", "currentTime": "2024-05-14T09:00:00.000Z", "interval": 300}],
        [3, "19223201", {}],
        [3, "19223201", None],
        [4, "19223201", "NotImplemented", "Unknown action", {}],
        [4, "19223201", "GenericError", "", {"detail": [1, 2]}],
        [4, "19223201", "OccurenceConstraintViolation", "misspelled but standard", {}],
        [4, "19223201", "WeirdVendorCode", "x", None],
        [2, "1", "Heartbeat", {}],
        [2, "1", "Heartbeat", []],
        [2, "1", "Reset", {"type": "Hard"}],
        [2, 1, "Heartbeat", {}],
        [2, "1", 7, {}],
        [5, "1", "x"],
        [2, "1", "Heartbeat"],
        [3, "1"],
        [],
        [2.0, "1", "Heartbeat", {}],
        ["2", "1", "Heartbeat", {}],
        [2, "\u00e9\U0001F600", "Authorize", {"idTag": "\u0000"}],
    ]
    for f in frames:
        write("ocpp_frame", js(f))
    for text in ['[2,"1","Heartbeat",{}', '{"a":1}', "null", "", '[2,"1","Heartbeat",{},]', deep(140),
                 '[2,"' + "\\ud800" + '","Heartbeat",{}]', '[3,"1",' + deep(127) + "]",
                 '[3,"1",{"v":1.2345678901234567e-300,"w":-0.0,"x":1e-7}]',
                 '[3,"big",' + js({"k": "v" * 12000}) + "]", '[9223372036854775808,"1"]', '[-1,"1"]']:
        write("ocpp_frame", text)
    for b in raw_bytes():
        write("ocpp_frame", b)


# ---------------------------------------------------------------------------------------------------------------
# Shenxing (shenxing.md §2.2)
# ---------------------------------------------------------------------------------------------------------------

def sxdm():
    def req(id_, method, path, body):
        body = "" if body is None else js(body)
        return "%s&%s %s HTTP/1.1\r\nHost: localhost\r\nContent-Length: %d\r\nContent-Type: application/json\r\n\r\n%s" % (
            id_, method, path, len(body.encode()), body)

    frames = [
        req("1718000000123", "GET", "/api/devices/status", None),
        req("42", "POST", "/api/auth/random", {"serial_no": "M014200892105001731"}),
        req("43", "POST", "/api/auth/login", {"serial_no": "M014200892105001731", "random": "583920", "password": "secret"}),
        req("44", "PUT", "/api/devices/config?x=1&y=2", {"door": {"open": 5}, "list": [1, 2.5, None, True]}),
        "1718000000123&HTTP/1.1 200 OK\r\n\r\n" + js({"serial_no": "M014", "model_spec": "X"}),
        "42&HTTP/1.1 200 OK\r\n\r\n{\"random\":\"583920\"}",
        "43&HTTP/1.1 401 Unauthorized\r\n\r\n{\"status\":401}",
        "43&HTTP/1.1 204\r\n\r\n",
        "43&HTTP/1.1 200 OK\r\n\r\nplain text body",
        "43& HTTP/1.1 599 Whatever Reason Here\n\n[1,2,3]",
        "7&get /x\n\n",
        "7&get /x HTTP/1.0\nX: 1\nbad header line\n: empty\n\n{\n  \"pretty\": true\n}\n",
        "7&GET /x HTTP/2\r\n\r\n",
        "7&GET / a b\r\n\r\n",
        "7&G3T /x\r\n\r\n",
        "7&GET x\r\n\r\n",
        "7&HTTP/1.1 99 Low\r\n\r\n",
        "7&HTTP/1.1 abc\r\n\r\n",
        "&GET /x\r\n\r\n",
        "no id here\r\n\r\n",
        "a b&GET /x?q=1&r=2\r\n\r\n",
        "\r\n\r\n  \n",
        "",
        "7&GET /x\r\n\r\n{broken",
        "7&GET /x\r\n\r\n" + deep(130),
        "7&GET /x\r\n" + "H: v\r\n" * 101 + "\r\n",
        "7&GET /x\r\n" + "H: v\r\n" * 100 + "\r\n{}",
        "7&GET /" + "p" * 12000 + " HTTP/1.1\r\n\r\n",
        "7&HTTP/1.1 200 " + "\u00e9" * 100 + "\r\n\r\n{\"k\":\"\U0001F600\\u0000\"}",
        "\u00e9\U0001F600&POST /\u202e\r\n\r\n{\"a\":1e400}",
        "7&POST /x\r\n\r\n{\"a\":-0.0,\"b\":1.2345678901234567e-300}",
        "7&POST /x\r\n\r\n\"quoted\"",
        "7&POST /x\r\n\r\nnull",
    ]
    for f in frames:
        write("sxdm_envelope", f)
        write("sxdm_envelope", f.replace("\r\n", "\n"))
        write("sxdm_envelope", f[: len(f) // 2])
    for b in raw_bytes():
        write("sxdm_envelope", b)


# ---------------------------------------------------------------------------------------------------------------
# Events (/ws/events ops)
# ---------------------------------------------------------------------------------------------------------------

def events():
    ops = [
        {"op": "subscribe", "topics": ["stats"], "interval": 1},
        {"op": "subscribe", "topics": ["device:ZX1369063044", "kind:tm20", "kind:ocpp", "kind:sxdm", "kind:billing", "room:lobby"]},
        {"op": "unsubscribe", "topics": ["stats"]},
        {"op": "subscribe", "topics": ["device:" + "x" * 65]},
        {"op": "subscribe", "topics": ["device:", "room:", "kind:nope", "unknown"]},
        {"op": "subscribe", "topics": ["stats"], "interval": 0.05},
        {"op": "subscribe", "topics": ["stats"], "interval": 1e308},
        {"op": "subscribe", "topics": ["stats"], "interval": 0.30000000000000004},
        {"op": "subscribe"},
        {"op": "Subscribe", "topics": []},
        {"op": "watch", "topics": ["nope"]},
        {"op": "subscribe", "topics": "stats"},
        {"op": "subscribe", "topics": [1, None]},
        {"op": "subscribe", "topics": ["room:\u00e9\U0001F600\u0000"], "extra": True},
        {"topics": ["stats"]},
    ]
    for o in ops:
        for v in variants(js(o), o):
            write("events_op", v)
    for t in ["stats", "device:X", "kind:tm20", "room:r", "", "[]", "null", deep(140), '{"op":"subscribe","topics":["stats"],"interval":"5"}',
              '{"op":"subscribe","op":"unsubscribe"}', '{"op":"subscribe","topics":[' + ",".join(['"stats"'] * 500) + "]}"]:
        write("events_op", t)
    for b in raw_bytes():
        write("events_op", b)


def ws_frame(opcode, payload, fin=True, mask=b"\x01\x02\x03\x04", rsv=0, length=None):
    """A client frame as a device sends it (masked unless mask is None)."""
    if isinstance(payload, str):
        payload = payload.encode("utf-8", "surrogatepass")
    n = len(payload) if length is None else length
    head = bytes([(0x80 if fin else 0) | rsv | opcode])
    m = 0x80 if mask is not None else 0
    if n < 126:
        head += bytes([m | n])
    elif n < 65536:
        head += bytes([m | 126]) + n.to_bytes(2, "big")
    else:
        head += bytes([m | 127]) + n.to_bytes(8, "big")
    if mask is None:
        return head + payload
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def ws_frames():
    """Frames of the lean WebSocket transport (RFC 6455): valid, fragmented, control, and broken ones."""
    reg = '{"cmd":"reg","sn":"ZX1369063044","devinfo":{"modelname":"tm20"}}'
    seeds = [
        ws_frame(1, reg),
        ws_frame(1, "h\u00e9llo \U0001F600"),
        ws_frame(2, bytes(range(256))),
        ws_frame(1, "x" * 300),
        ws_frame(1, "y" * 5000),  # over the target's 4096-byte limit
        ws_frame(1, "ab", fin=False) + ws_frame(9, "p") + ws_frame(0, "cd", fin=False) + ws_frame(0, "ef"),
        ws_frame(2, b"\x00", fin=False) + ws_frame(0, b"\x01"),
        ws_frame(9, "ping") + ws_frame(10, "") + ws_frame(1, reg),
        ws_frame(8, b"\x03\xe8bye") + ws_frame(1, "after close"),
        ws_frame(8, b""),
        ws_frame(8, b"\x03"),  # a 1-byte close payload
        ws_frame(8, b"\x03\xe8\xff"),  # reason not UTF-8
        ws_frame(1, reg, mask=None),  # unmasked
        ws_frame(1, b"\xff\xfe"),  # text not UTF-8
        ws_frame(0, "orphan continuation"),
        ws_frame(9, "p" * 126),  # control frame too long
        ws_frame(9, "p", fin=False),  # fragmented control frame
        ws_frame(1, "a", fin=False) + ws_frame(1, "b"),  # new message inside a fragmented one
        ws_frame(1, "rsv", rsv=0x40),
        ws_frame(3, "reserved opcode"),
        ws_frame(11, "reserved control"),
        ws_frame(1, "short", length=1 << 40),  # claims a huge length
        ws_frame(1, reg)[:7],  # truncated
        ws_frame(1, "a" * 3000, fin=False) + ws_frame(0, "b" * 3000),  # fragments over the limit together
        b"",
        b"\x81",
    ]
    for seed in seeds:
        write("ws_frames", seed)


def main():
    ws_frames()
    tm20_frames()
    tm20_commands()
    ocpp()
    sxdm()
    events()
    for t in sorted(os.listdir(CORPUS)):
        print(t, len(os.listdir(os.path.join(CORPUS, t))))


if __name__ == "__main__":
    sys.exit(main())
