/* av_config.c - not written yet (skeleton commit). */
typedef int av_config_not_written_yet;
