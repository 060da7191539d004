# The forecast example program (clients/python/examples/forecast) with the busgate Python client:
#   docker build -f deploy/program.Dockerfile -t forecast:0.1.0 .
# Any program image works with deploy/helm/busgate-program as long as `python -m <module> <command>`
# runs it and busgate[program] (the runner's /metrics) is installed.
FROM python:3.11-slim
WORKDIR /app
COPY clients/python /src/busgate-python
RUN pip install --no-cache-dir '/src/busgate-python[program]' && rm -rf /src \
    && groupadd --system --gid 10001 app && useradd --system --uid 10001 --gid 10001 app
COPY clients/python/examples/forecast /app/forecast
USER 10001:10001
ENV PYTHONUNBUFFERED=1
EXPOSE 9464
ENTRYPOINT ["python", "-m", "forecast"]
CMD ["serve"]
