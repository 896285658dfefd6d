/* rope.c: plain RoPE in C, judged by ropeconf through the exec line protocol (docs/protocol.md).
 *
 * Build:  cc -O2 -o rope rope.c -lm
 * Run:    ropeconf run --adapter "exec:./rope" --variants default --dtype float32,float64,bfloat16
 * Offline (no process under the suite):
 *         ropeconf judge --golden default__half__d64r64__long --export case/
 *         ./rope golden case/              (reads case/x.npy, positions.npy, spec.json; writes case/out.npy)
 *         ropeconf judge --golden default__half__d64r64__long --output case/out.npy
 *
 * Modes (argv[1], else the environment variable ROPE_MODE): correct (default); and, for the suite's
 * own tests, bug (positions off by one; ROPE_MODE=bug also applies to golden), crash (abort on the
 * first case), hang (sleep on the first case).
 *
 * Supports: rope_type default, layouts half and interleaved, partial rotation, float32 / float64 /
 * bfloat16 (bfloat16 travels as uint16 bits), positions (batch, seq) int64.  No numpy: the .npy reader
 * and writer below are the whole format as the protocol uses it.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* ------------------------------------------------------------------------------------------- .npy */
typedef struct {
    char descr[8];      /* "<f4", "<f8", "<u2" (bfloat16 bits), "<i8" */
    int ndim;
    long shape[8];
    long count;         /* number of elements */
    size_t itemsize;
    void *data;
} npy;

static char err[512];   /* the message of the last failure, sent back as "error MESSAGE" */

static int npy_read(const char *path, npy *a) {
    FILE *f = fopen(path, "rb");
    unsigned char pre[12];
    if (!f) { snprintf(err, sizeof err, "cannot open %s", path); return -1; }
    if (fread(pre, 1, 10, f) != 10 || memcmp(pre, "\x93NUMPY", 6) != 0) {
        snprintf(err, sizeof err, "%s is not a .npy file", path); fclose(f); return -1;
    }
    size_t hlen = pre[8] | (pre[9] << 8);                          /* version 1.x: 2-byte header length */
    if (pre[6] >= 2) {                                              /* version 2.x / 3.x: 4 bytes */
        if (fread(pre + 10, 1, 2, f) != 2) { fclose(f); return -1; }
        hlen = pre[8] | (pre[9] << 8) | ((size_t)pre[10] << 16) | ((size_t)pre[11] << 24);
    }
    char *h = calloc(hlen + 1, 1);
    if (!h || fread(h, 1, hlen, f) != hlen) {
        snprintf(err, sizeof err, "%s: short header", path); fclose(f); free(h); return -1;
    }
    char *d = strstr(h, "'descr'"), *fo = strstr(h, "'fortran_order'"), *sh = strstr(h, "'shape'");
    char *q = d ? strchr(d + 7, '\'') : NULL;                      /* the quote that opens the descr value */
    if (!q || !fo || !sh || !strchr(sh, '(') || sscanf(q + 1, "%7[^']", a->descr) != 1
        || strncmp(fo + 15, ": True", 6) == 0) {
        snprintf(err, sizeof err, "%s: unsupported header %s", path, h); fclose(f); free(h); return -1;
    }
    a->ndim = 0; a->count = 1;
    for (char *p = strchr(sh, '(') + 1; *p && *p != ')';) {
        while (*p == ' ' || *p == ',') p++;
        if (*p == ')') break;
        a->shape[a->ndim] = strtol(p, &p, 10);
        a->count *= a->shape[a->ndim++];
    }
    free(h);
    a->itemsize = (size_t)atoi(a->descr + 2);
    if (a->descr[0] != '<' && a->itemsize > 1) {
        snprintf(err, sizeof err, "%s: not little-endian", path); fclose(f); return -1;
    }
    a->data = malloc(a->count * a->itemsize + 1);
    if (fread(a->data, a->itemsize, a->count, f) != (size_t)a->count) {
        snprintf(err, sizeof err, "%s: short data", path); fclose(f); return -1;
    }
    fclose(f);
    return 0;
}

static int npy_write(const char *path, const char *descr, const long *shape, int ndim, const void *data,
                     size_t itemsize, long count) {
    char h[256];
    int n = snprintf(h, sizeof h, "{'descr': '%s', 'fortran_order': False, 'shape': (", descr);
    for (int i = 0; i < ndim; i++) n += snprintf(h + n, sizeof h - n, "%ld, ", shape[i]);
    n += snprintf(h + n, sizeof h - n, "), }");
    while ((10 + n + 1) % 64) h[n++] = ' ';                         /* pad: data starts 64-byte aligned */
    h[n++] = '\n';
    FILE *f = fopen(path, "wb");
    if (!f) { snprintf(err, sizeof err, "cannot write %s", path); return -1; }
    unsigned char pre[10] = {0x93, 'N', 'U', 'M', 'P', 'Y', 1, 0, (unsigned char)(n & 255), (unsigned char)(n >> 8)};
    fwrite(pre, 1, 10, f);
    fwrite(h, 1, n, f);
    fwrite(data, itemsize, count, f);
    return fclose(f) == 0 ? 0 : -1;
}

/* ------------------------------------------------------------------------------------------- spec.json */
/* The value after "key": in a flat JSON object (our spec.json), or NULL. */
static const char *json_value(const char *json, const char *key) {
    char pat[64];
    snprintf(pat, sizeof pat, "\"%s\"", key);
    const char *p = strstr(json, pat);
    if (!p) return NULL;
    p = strchr(p + strlen(pat), ':');
    if (!p) return NULL;
    for (p++; *p == ' '; p++) {}
    return p;
}

static int json_is(const char *json, const char *key, const char *literal) {
    const char *v = json_value(json, key);
    return v && strncmp(v, literal, strlen(literal)) == 0;
}

static char *read_file(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *s = calloc(n + 1, 1);
    if (fread(s, 1, n, f) != (size_t)n) { free(s); s = NULL; }
    fclose(f);
    return s;
}

/* ------------------------------------------------------------------------------------------- RoPE */
static int bug;   /* mode "bug": positions off by one */

static float bf16_to_float(uint16_t b) { uint32_t u = (uint32_t)b << 16; float f; memcpy(&f, &u, 4); return f; }
static uint16_t float_to_bf16(float f) {                              /* round to nearest even */
    uint32_t u; memcpy(&u, &f, 4);
    if ((u & 0x7fffffff) > 0x7f800000) return (uint16_t)((u >> 16) | 64);   /* NaN stays NaN */
    return (uint16_t)((u + 0x7fff + ((u >> 16) & 1)) >> 16);
}

/* Rotate x (batch, heads, seq, head_dim) by positions (batch, seq); returns 0, 1 unsupported, -1 error. */
static int rope(const char *spec_path, const char *dtype, const npy *x, const npy *pos, const char *out_path) {
    char *spec = read_file(spec_path);
    if (!spec) { snprintf(err, sizeof err, "cannot read %s", spec_path); return -1; }
    int rc = 1;
    if (!json_is(spec, "rope_type", "\"default\"")) snprintf(err, sizeof err, "only rope_type default");
    else if (!json_is(spec, "freqs_for", "\"lang\"")) snprintf(err, sizeof err, "only freqs_for lang");
    else if (!json_is(spec, "xpos", "false")) snprintf(err, sizeof err, "no xpos");
    else if (!json_is(spec, "axial_axes", "0") || !json_is(spec, "mrope_section", "null"))
        snprintf(err, sizeof err, "no multi-axis positions");
    else rc = 0;
    int interleaved = json_is(spec, "layout", "\"interleaved\"");
    double theta = json_value(spec, "rope_theta") ? atof(json_value(spec, "rope_theta")) : 10000.0;
    long D = json_value(spec, "head_dim") ? atol(json_value(spec, "head_dim")) : 0;
    long r = json_value(spec, "rotary_dim") ? atol(json_value(spec, "rotary_dim")) : D;
    free(spec);
    if (rc) return 1;
    int f64 = strcmp(dtype, "float64") == 0, bf16 = strcmp(dtype, "bfloat16") == 0;
    if (!f64 && !bf16 && strcmp(dtype, "float32") != 0) { snprintf(err, sizeof err, "dtype %s", dtype); return 1; }
    const char *want = f64 ? "<f8" : bf16 ? "<u2" : "<f4";
    if (strcmp(x->descr, want) || x->ndim != 4 || x->shape[3] != D || r > D || r % 2) {
        snprintf(err, sizeof err, "x is %s with %d dims, expected %s (batch, heads, seq, %ld)",
                 x->descr, x->ndim, want, D);
        return -1;
    }
    if (strcmp(pos->descr, "<i8") || pos->ndim != 2 || pos->shape[0] != x->shape[0] || pos->shape[1] != x->shape[2]) {
        snprintf(err, sizeof err, "positions must be int64 (batch, seq)");
        return -1;
    }
    long B = x->shape[0], H = x->shape[1], S = x->shape[2], h = r / 2;
    const int64_t *p = pos->data;
    void *out = malloc(x->count * x->itemsize);
    memcpy(out, x->data, x->count * x->itemsize);                   /* the tail [r, D) passes through */
    for (long b = 0; b < B; b++)
        for (long hd = 0; hd < H; hd++)
            for (long s = 0; s < S; s++) {
                long row = ((b * H + hd) * S + s) * D, ps = p[b * S + s] + bug;
                for (long i = 0; i < h; i++) {
                    long i1 = interleaved ? 2 * i : i, i2 = interleaved ? 2 * i + 1 : i + h;
                    if (f64) {   /* float64: everything in double */
                        double w = 1.0 / pow(theta, (double)(2 * i) / (double)r), a = (double)ps * w;
                        double c = cos(a), sn = sin(a), *xi = (double *)x->data + row, *o = (double *)out + row;
                        o[i1] = xi[i1] * c - xi[i2] * sn;
                        o[i2] = xi[i2] * c + xi[i1] * sn;
                    } else {     /* float32 and bfloat16: angles and the rotation in float, as usual */
                        float w = 1.0f / powf((float)theta, (float)(2 * i) / (float)r), a = (float)ps * w;
                        float c = cosf(a), sn = sinf(a), x1, x2;
                        if (bf16) {
                            const uint16_t *xi = (const uint16_t *)x->data + row;
                            uint16_t *o = (uint16_t *)out + row;
                            x1 = bf16_to_float(xi[i1]); x2 = bf16_to_float(xi[i2]);
                            o[i1] = float_to_bf16(x1 * c - x2 * sn);
                            o[i2] = float_to_bf16(x2 * c + x1 * sn);
                        } else {
                            const float *xi = (const float *)x->data + row;
                            float *o = (float *)out + row;
                            x1 = xi[i1]; x2 = xi[i2];
                            o[i1] = x1 * c - x2 * sn;
                            o[i2] = x2 * c + x1 * sn;
                        }
                    }
                }
            }
    rc = npy_write(out_path, want, x->shape, 4, out, x->itemsize, x->count);
    free(out);
    return rc;
}

/* One case from files; returns 0 ok, 1 unsupported, -1 error (message in err). */
static int run_case(const char *dtype, const char *xp, const char *pp, const char *sp, const char *op) {
    npy x = {0}, pos = {0};
    int rc = npy_read(xp, &x);
    if (rc == 0) rc = npy_read(pp, &pos);
    if (rc == 0) rc = rope(sp, dtype, &x, &pos, op);
    free(x.data);
    free(pos.data);
    return rc;
}

/* ------------------------------------------------------------------------------------------- protocol */
static const char *HELLO =
    "hello 1 {\"library\": \"rope.c\", \"version\": \"1.0\", \"capabilities\": {"
    "\"rope_types\": [\"default\"], \"layouts\": [\"half\", \"interleaved\"], "
    "\"dtypes\": [\"float32\", \"float64\", \"bfloat16\"], \"partial\": true, \"positions\": \"arbitrary\"}}";

int main(int argc, char **argv) {
    const char *env = getenv("ROPE_MODE"), *mode = argc > 1 ? argv[1] : env ? env : "correct";
    bug = strcmp(mode, "bug") == 0 || (env && strcmp(env, "bug") == 0);   /* also for "golden" */
    if (strcmp(mode, "golden") == 0) {   /* offline: a case exported by `ropeconf judge --export DIR` */
        if (argc < 3) { fprintf(stderr, "usage: rope golden CASE_DIR [OUT.npy]\n"); return 2; }
        char xp[4096], pp[4096], sp[4096], op[4096];
        snprintf(xp, sizeof xp, "%s/x.npy", argv[2]);
        snprintf(pp, sizeof pp, "%s/positions.npy", argv[2]);
        snprintf(sp, sizeof sp, "%s/spec.json", argv[2]);
        snprintf(op, sizeof op, "%s", argc > 3 ? argv[3] : "");
        if (argc <= 3) snprintf(op, sizeof op, "%s/out.npy", argv[2]);
        npy x = {0};
        if (npy_read(xp, &x)) { fprintf(stderr, "rope: %s\n", err); return 1; }
        const char *dtype = !strcmp(x.descr, "<f8") ? "float64" : !strcmp(x.descr, "<u2") ? "bfloat16" : "float32";
        free(x.data);
        int rc = run_case(dtype, xp, pp, sp, op);
        if (rc) fprintf(stderr, "rope: %s\n", err);
        return rc ? 1 : 0;
    }
    char *line = NULL;
    size_t cap = 0;
    int cases = 0;
    while (getline(&line, &cap, stdin) > 0) {
        line[strcspn(line, "\r\n")] = 0;
        if (strncmp(line, "hello ", 6) == 0) {          /* "hello 1": we speak protocol 1 */
            printf("%s\n", HELLO);
        } else if (strcmp(line, "bye") == 0) {
            break;
        } else if (strncmp(line, "case\t", 5) == 0) {   /* case ID DTYPE ROLE DEVICE X POSITIONS SPEC OUT */
            char *f[9];
            int n = 0;
            for (char *t = strtok(line, "\t"); t && n < 9; t = strtok(NULL, "\t")) f[n++] = t;
            if (cases++ == 0 && strcmp(mode, "crash") == 0) abort();
            if (cases == 1 && strcmp(mode, "hang") == 0) for (;;) pause();
            if (n != 9) { printf("error expected 9 tab-separated fields, got %d\n", n); fflush(stdout); continue; }
            if (strcmp(f[4], "cpu") != 0) { printf("unsupported device %s\n", f[4]); fflush(stdout); continue; }
            int rc = run_case(f[2], f[5], f[6], f[7], f[8]);
            if (rc == 0) printf("ok\n");
            else if (rc > 0) printf("unsupported %s\n", err);
            else printf("error %s\n", err);
        } else {
            printf("error unknown request\n");
        }
        fflush(stdout);
    }
    free(line);
    return 0;
}
