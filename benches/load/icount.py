#!/usr/bin/env python3
"""Instructions per request of portico builds, counted by valgrind (callgrind) at two request
counts and differenced, so start-up and shutdown cancel out. Deterministic to ~0.1% where
CPU time on a shared machine moves by 10-30%: use it to compare two builds of the same code
path; use run.sh for what a request costs in time.

    benches/load/icount.py LABEL=BINARY[,LABEL=BINARY...] CONFIG[,CONFIG...]
    ROUNDS=2 benches/load/icount.py old=/tmp/old/portico,new=target/release/portico plain,chain

CONFIG is plain (one route) or chain (HS256 + a local rate limit + metrics + access log),
as in run.sh, or control: BINARY is then the bare-Pingora control (examples/bare_pingora.rs).
SERVER_EXTRA (environment): lines added to the server section, as in run.sh. With PROFILE=1, the functions whose own instructions per request differ most between the
two request counts are printed too (where a request's instructions go). Needs valgrind (Debian: valgrind); each run takes about a minute.
"""
import base64, tempfile, hashlib, hmac, http.client, http.server, json, os, re, signal, socket, subprocess, sys, threading, time

BINS = dict(a.split('=', 1) for a in sys.argv[1].split(','))  # label=path,...
CONFIGS = sys.argv[2].split(',')
N1, N2 = 300, 1300
WORK = tempfile.mkdtemp(prefix='portico-icount.')

class H(http.server.BaseHTTPRequestHandler):
    protocol_version = 'HTTP/1.1'
    def do_GET(self):
        body = b'x' * 100
        self.send_response(200)
        self.send_header('content-length', str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a): pass

origin = http.server.ThreadingHTTPServer(('127.0.0.1', 0), H)
threading.Thread(target=origin.serve_forever, daemon=True).start()
oport = origin.server_address[1]

def b64(b): return base64.urlsafe_b64encode(b).rstrip(b'=').decode()
secret = 'k' * 40
hdr = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
body = b64(json.dumps({"iss": "bench", "sub": "user-1", "exp": int(time.time()) + 86400}).encode())
sig = b64(hmac.new(secret.encode(), f'{hdr}.{body}'.encode(), hashlib.sha256).digest())
TOKEN = f'{hdr}.{body}.{sig}'

def free_port():
    s = socket.socket(); s.bind(('127.0.0.1', 0)); p = s.getsockname()[1]; s.close(); return p

def config(name, port, d):
    base = f"""server:
  threads: 1
  pid_file: {d}/portico.pid
  upgrade_sock: {d}/upgrade.sock
  grace_period: 0s
  shutdown_timeout: 1s
  log_level: warn
{os.environ.get('SERVER_EXTRA', '')}
listeners:
  - address: 127.0.0.1:{port}
upstreams:
  - name: origin
    targets: [{{address: "127.0.0.1:{oport}"}}]
"""
    if name == 'plain':
        return base + "routes:\n  - name: all\n    upstream: origin\n"
    return base + f"""auth:
  jwt:
    - name: main
      algorithms: [HS256]
      keys: {{secret: "{secret}"}}
      issuer: bench
routes:
  - name: all
    upstream: origin
    access: {{providers: [main]}}
    rate_limits:
      - {{name: big, requests: 1000000000, per: 1s, key: consumer}}
admin: {{address: "127.0.0.1:{free_port()}"}}
access_log: {d}/access.log
"""

def run(binary, name, n):
    d = f'{WORK}/{name}-{n}-{time.time_ns()}'
    os.makedirs(d)
    port = free_port()
    open(f'{d}/p.yaml', 'w').write(config(name, port, d))
    out = f'{d}/cg.out'
    args = [binary, 'run', '-c', f'{d}/p.yaml']
    if name == 'control':
        # The bare-Pingora control (examples/bare_pingora.rs): listen and upstream addresses.
        args = [binary, f'127.0.0.1:{port}', f'127.0.0.1:{oport}']
    p = subprocess.Popen(['valgrind', '--tool=callgrind', f'--callgrind-out-file={out}'] + args,
                         stdout=subprocess.DEVNULL, stderr=open(f'{d}/stderr', 'w'))
    deadline = time.time() + 120
    while True:
        try:
            c = http.client.HTTPConnection('127.0.0.1', port, timeout=30); c.connect(); break
        except OSError:
            if time.time() > deadline: raise
            time.sleep(0.2)
    headers = {'authorization': f'Bearer {TOKEN}'} if name == 'chain' else {'x-bench': '1'}
    for _ in range(n):
        c.request('GET', '/bench', headers=headers)
        r = c.getresponse(); r.read()
        assert r.status == 200, r.status
    c.close()
    time.sleep(0.5)
    p.send_signal(signal.SIGINT)
    p.wait(timeout=120)
    total = None
    for line in open(out):
        if line.startswith('totals:') or line.startswith('summary:'):
            total = int(line.split()[1])
    KEEP[(binary, name, n)] = out
    return total

results = {}
KEEP = {}
for rnd in range(int(os.environ.get('ROUNDS', '1'))):
    for name in CONFIGS:
        for label, binary in BINS.items():
            a = run(binary, name, N1); b = run(binary, name, N2)
            per = (b - a) / (N2 - N1)
            results.setdefault((name, label), []).append(per)
            print(f'round {rnd} {name:6} {label:4} {per:10.0f} instructions/request', flush=True)
if os.environ.get('PROFILE'):
    for (binary, name, n), out in KEEP.items():
        if n != N2:
            continue
        def selfcost(path):
            text = subprocess.run(['callgrind_annotate', '--threshold=100', '--inclusive=no',
                                   '--auto=no', path], capture_output=True, text=True).stdout
            costs = {}
            table = False
            for line in text.splitlines():
                if 'file:function' in line:
                    table = True
                    continue
                m = re.match(r'\s*([\d,]+) \([ \d.]+%\)\s+(.*)', line)
                if table and m:
                    # file:function [object]; inlined code is named by its source file.
                    fn = m.group(2).split(' [')[0]
                    costs[fn] = costs.get(fn, 0) + int(m.group(1).replace(',', ''))
            return costs
        hi, lo = selfcost(out), selfcost(KEEP[(binary, name, N1)])
        per = sorted(((hi.get(f, 0) - lo.get(f, 0)) / (N2 - N1), f) for f in set(hi) | set(lo))
        print(f'-- {name} ({binary}): own instructions per request, top 45')
        for v, f in reversed(per[-45:]):
            print(f'{v:9.0f}  {f[:150]}')
print(f'instructions per request, every round (work files in {WORK})')
for (name, label), v in sorted(results.items()):
    print(f'{name:6} {label:8}', ' '.join(f'{x:.0f}' for x in v))
