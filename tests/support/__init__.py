"""What every test suite shares (tests/, tests/e2e/, tests_reliability/).

envs       real virtual environments, the variables of a reporting process, the wheel
sinks      a UDP sink and a TCP collector on 127.0.0.1
wire       what popcon-site sent, read with popcon_site._report (the one wire format)
ports      a free port
distinfo   hand-made wheels and dist-info directories
users      running a command as another user
fixtures   the pytest fixtures every suite uses (wheel, sink, home)
"""
