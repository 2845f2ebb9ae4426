/* av_resolver.c - not written yet (skeleton commit). */
typedef int av_resolver_not_written_yet;
