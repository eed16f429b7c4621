/*
 * rampart-av main: hand the stage's parameters to the server skeleton.
 */
#include "mail/stage.h"

extern const struct stage_def av_stage;

int main(int argc, char **argv)
{
	return stage_main(&av_stage, argc, argv);
}
