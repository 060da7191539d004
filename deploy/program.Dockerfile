# The forecast example program (clients/python/examples/forecast) with the busgate Python client:
#   docker build -f deploy/program.Dockerfile -t forecast .
# Any program image works with deploy/helm/busgate-program as long as `python -m <module> <command>`
# runs it and busgate[program] (the runner's /metrics) is installed.
FROM python:3.11-slim
WORKDIR /app
COPY clients/python /src/busgate-python
RUN pip install --no-cache-dir '/src/busgate-python[program]' && rm -rf /src \
    && useradd --system --uid 10001 app
COPY clients/python/examples/forecast /app/forecast
USER app
ENV PYTHONUNBUFFERED=1
EXPOSE 9464
ENTRYPOINT ["python", "-m", "forecast"]
CMD ["serve"]
