# syntax=docker/dockerfile:1
FROM python:3.12-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

WORKDIR /srv

RUN <<EOF
set -eux
apt-get update
apt-get install -y --no-install-recommends build-essential
rm -rf /var/lib/apt/lists/*
EOF

COPY requirements.txt .
RUN --mount=type=cache,target=/root/.cache/pip pip install -r requirements.txt

COPY <<-"CONF" /etc/app/settings.ini
	[server]
	port = ${PORT}
	CONF

RUN python3 <<PY > /srv/build-info.txt
import platform
print(platform.python_version())
PY

COPY . .
CMD ["gunicorn", "--bind", "0.0.0.0:8000", "app:create_app()"]
